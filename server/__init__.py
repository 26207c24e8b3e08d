"""I/O side of canvashub: settings, the ASGI app, WebSocket connections and rooms."""
