"""Bind sources held still: a path a user can change is judged and mounted as one object.

The engine resolves a bind's source path again every time it mounts it (a start, a restart it
makes by itself, a swarm task, `docker cp`). A user who can change any folder or link on that
path could swap in the engine socket after the agent judged it. So such a source is opened
once (`hold`), the open file is what the policy judges, and that very file is bind-mounted at a
pin path only root can change (`PinBoard.pin`); the engine is given the pin path.
"""
