"""The laptop side: SDK (`Flashpods`), CLI (`flashpods`), MCP server (`flashpods-mcp`)."""

from flashpods.client.config import ClientConfig, load_config
from flashpods.client.errors import FlashpodsError
from flashpods.client.retry import RetryPolicy
from flashpods.client.sdk import Flashpods, PollSchedule, RetryEvent

__all__ = [
    "ClientConfig",
    "Flashpods",
    "FlashpodsError",
    "PollSchedule",
    "RetryEvent",
    "RetryPolicy",
    "load_config",
]
