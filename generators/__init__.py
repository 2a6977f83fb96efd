"""Generator adapters: EG3D-Age, CUSP, diffusion and the weight-free cardioid warp.

Public entry points::

    from generators import create_generator, generate_to, AgePlan, run_generate
    gen = create_generator("cardioid", source_age=30)
    generate_to(out, gen, identities, AgePlan.from_options(ages="3,8,14"))

``run_generate`` is the whole ``agebias generate`` job (validation, identities, writing, QC).
"""

from generators.ages import AgePlan, parse_age_intervals, parse_ages
from generators.base import Generator, Identity, Sample
from generators.registry import available_generators, create_generator, get_generator_class, register_generator
from generators.writer import GenerateResult, generate_to


def run_generate(*args, **kwargs):
    """See :func:`generators.api.run_generate`."""
    from generators.api import run_generate as _run

    return _run(*args, **kwargs)


__all__ = ["AgePlan", "GenerateResult", "Generator", "Identity", "Sample", "available_generators",
           "create_generator", "generate_to", "get_generator_class", "parse_age_intervals", "parse_ages",
           "register_generator", "run_generate"]
