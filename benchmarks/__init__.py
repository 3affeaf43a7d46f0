"""Speed and memory of the zoo against plain PyTorch twins: ``python -m benchmarks [--short]``.

One module per benchmark (overhead, parity, memory, efficiency, startup, dataloading, ddp), each with
``run(mode) -> list[Figure]``; :mod:`benchmarks.common` interleaves the sides, keeps the best run of each,
watches the load and writes the JSON; :mod:`benchmarks.twins` builds both sides of a comparison.
:mod:`benchmarks.gpu` (``python -m benchmarks.gpu``) is run on its own: the checks only a GPU can run.
"""
