"""The restore runner: the program the restore Job runs (`python -m daoflow_operator.runner`).

It fetches the artifact, verifies its sha256 against the pinned one, and restores it into a
volume or a PostgreSQL database without ever making the target worse. See docs/runner.md.
"""
