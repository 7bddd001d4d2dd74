"""MCP tools over the event log (stdio, and Streamable HTTP mounted in the app), so that
Claude and other MCP clients record their own steps, forks and scores. Built in a later
issue; it writes through the same append path as every other recorder."""
