"""Generator adapters: EG3D-Age, CUSP, diffusion and the weight-free cardioid warp."""
