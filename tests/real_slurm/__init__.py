# A package, so that this folder's conftest.py is imported as real_slurm.conftest and does
# not replace tests/conftest.py as the module `conftest` (tests/test_e2e.py imports it by name).
