"""The plain functions every way of running the zoo goes through: `zoo fit | validate | test | predict` (through
:class:`zoo.lightning_cli.ZooCLI`, which adapts them to LightningCLI's hooks), the zoo's other commands, the
benchmarks and notebooks.

- :mod:`zoo.run.build`: ``parse(argv)`` (the resolved config, nothing built) and ``build(argv)`` (task,
  datamodule and trainer, every check passed), quiet while they run, and ``dump_with`` (a config with values
  set, as YAML).
- :mod:`zoo.run.preflight`: every check and decision before training: the checkpoint's settings, the
  pretrained backbone's preprocessing, classes and input shape, precision, the training budget.
- :mod:`zoo.run.callbacks`: the default callbacks and plugins, and when the user's own replace them.
- :mod:`zoo.run.outputs`: the run folder, the test after a fit and the metrics written as JSON.
- :mod:`zoo.run.distributed`: ending a distributed run cleanly, and telling when a peer died.

This package imports nothing at the top, so that :mod:`zoo.lightning_cli` can use its modules while
:mod:`zoo.run.build` uses ZooCLI.
"""
