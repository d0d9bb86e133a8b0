"""Unit tests of the lab's pure parts and its supervisor (no namespaces, no root needed
except where a test says so)."""
