"""Training: ``fba train`` and everything a run owns.

``trainer`` holds the loop (:class:`Trainer`, :class:`TrainStep`, ``build_engine``), ``engine_config`` the
DeepSpeed configuration, ``cadence`` when to checkpoint and evaluate, ``checkpoint`` the resumable checkpoints,
``run_folder`` and ``run_lock`` the output folder and its lock, ``signals`` the stop request, ``guard`` the
divergence checks, ``schedule`` the learning rate, ``logger`` the metrics log, ``preflight`` the image check
before the first step. The ``model.pt`` a run exports is :mod:`fba.model.model_file`.
"""
