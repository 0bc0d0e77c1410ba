"""mbsnet: an ablation pipeline for band-split speech enhancement.

Where code lives:

- ``commands/`` holds only thin adapters of the command line: each parses its arguments,
  calls one function of a domain package, and leaves error messages and exit codes to
  ``cli``. Anything a test, a benchmark or another package could call belongs elsewhere.
- Each domain is a subpackage: ``data`` (the prepared corpus, its manifest and datasets),
  ``models`` (the networks; the selective scan beside the Mamba block), ``train``,
  ``evaluation`` (enhancement with a trained model, and the evaluation of a split),
  ``metrics``, ``profiling`` and ``report``.
- The top level keeps only what several domains share: config, errors, atomic writes,
  device and GPU claims, audio (STFT), wav I/O, stats, worker processes, progress, console
  output (the command line's logging), the results layout, and ``watch``.
"""

__version__ = "0.1.0"
