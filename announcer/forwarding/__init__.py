"""Connection-preserving drain (docs/drain.md): while a peer of the group drains a
service, this node passes the packets of connections it does not hold (non-SYN TCP
packets conntrack does not know) through a tunnel to the draining node, which still
holds the anycast address and delivers them to its sockets.

- :mod:`~announcer.forwarding.settings`: the ``[forwarding]`` table.
- :mod:`~announcer.forwarding.plan`: pure: which peer, if any, gets each prefix's packets.
- :mod:`~announcer.forwarding.kernel`: the kernel's side (libnftables, pyroute2), behind
  the small :class:`~announcer.forwarding.kernel.Kernel` interface.
- :mod:`~announcer.forwarding.forwarder`: the daemon's side: standing part at start,
  the moving part from each fleet view, removal at stop.

Nothing here is imported unless the config has a ``[forwarding]`` table.
"""
