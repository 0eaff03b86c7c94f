"""Offline tools that prove an OpenRed node's log intact: verify, checkpoint, export, replay, prove.

This package reads logs; it never writes to one, and it imports neither Quart, aiohttp nor the
node or directory applications.
"""
