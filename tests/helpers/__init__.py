"""What the tests share that is not a fixture: builders, clients, far ends, processes.

One module per idea; test modules import from here, never from each other, and the
fixtures built on these live in tests/conftest.py.
"""
