"""GLUE: task readers, metrics, fine-tuning through the trainer, results, and pretraining probes.

Modules, in the order data flows through them:

* ``tasks``: the nine tasks' official TSV layouts -> examples -> token ids (bytes or
  SentencePiece, ``[CLS] a [SEP] b [SEP]``, fair truncation).
* ``data``: a run's split read and encoded (``load_split``); a resumable training loader and a
  padded evaluation loader that the trainer uses instead of its streaming loader (through the
  ``classification`` objective, ``pretrain.objectives.classification``).
* ``metrics``: the GLUE metrics and the GLUE average.
* ``finetune``: ``perceiver glue``: configs for the paper's grid, local runs or a Slurm array,
  evaluation of finished runs, best dev result per task.
* ``results``: ``results.json``/``results.md`` and leaderboard submission files.
* ``probes``: GLUE probes every N steps of pretraining (inline or as Slurm jobs).
* ``cli``: the ``export``, ``import-hf`` and ``glue`` subcommands.

See docs/glue.md.
"""
