"""Bias-mitigation methods with age groups as the protected attribute (REFERENCE.md section 7).

One small module per method with its formula (``label_flip``, ``group_margin``, ``adversarial``, ``mixfair``,
``ddl``), the ``NAME[:key=value,...]`` registry (:mod:`agebias.mitigation.registry`) and the trainer hooks
(:mod:`agebias.mitigation.hooks`, loaded by ``agebias.finetune.hooks.create_hooks``).
"""
