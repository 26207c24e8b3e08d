"""Sans-I/O core of canvashub: the y-websocket codec and room document logic.

Nothing in this package touches sockets, databases, asyncio or the environment:
it turns bytes into typed messages, applies them to documents and says what to
send where. ``server/`` owns all I/O.
"""
