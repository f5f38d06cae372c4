"""What several test modules share: stand-in Kafka clients, span and metric readers, waits.

``tests/`` is on pytest's ``pythonpath`` (pyproject.toml), so tests ``import helpers.…``.
"""
