"""Running workflows: the executor and batch runner, the worker that feeds them, and mail triggers.

Run and step state is written by the run ledger (mailwright.ledger); what the engine needs from
the services is declared in engine/ports.py and passed in by services/app.py.
"""
