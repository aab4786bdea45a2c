"""`eci-agent doctor`: is eci-agent really the only way to the engine on this machine?

`checks` turns facts into findings (pure); `gather` collects the facts (sockets, /proc,
/etc/group, the engine, the agent's control API).
"""
