"""The userspace netstack (weftnet.netstack) and its asyncio adapter."""
