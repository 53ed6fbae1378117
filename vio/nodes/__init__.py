"""Several ``vio serve`` processes as one service: rooms owned through Redis leases,
connections relayed to the node that owns their room (see ``node`` and ``placement``)."""
