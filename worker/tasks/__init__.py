"""One thin task module per job kind: each exposes `handle(run: JobRun) -> None`."""
