"""The lab: the whole Flashpods system on one Linux machine, in network namespaces.

`flashpods-lab up` builds the laptop, host and "internet" namespaces, WireGuard
(wireguard-go), the host firewall, rsyncd, SPIRE, the token service and the API, with
the users, paths, modes and environments the NixOS modules give them (read from
modules/data through flashpods.deployment). See docs/lab.md.
"""
