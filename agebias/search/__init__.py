"""Multi-objective architecture / hyper-parameter / mitigation search on Optuna (``agebias search``).

:mod:`~agebias.search.experiment` reads the search file, :mod:`~agebias.search.space` the searched parameters,
:mod:`~agebias.search.objectives` the minimised objectives, :mod:`~agebias.search.trial` runs one trial
(finetune + score) and :mod:`~agebias.search.study` the study, its workers and the Pareto outputs.
"""
