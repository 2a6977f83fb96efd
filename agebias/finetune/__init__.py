"""agebias.finetune"""
