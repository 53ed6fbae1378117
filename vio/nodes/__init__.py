"""Several ``vio serve`` processes as one service: rooms owned through Redis leases with epochs
(``placement``), connections relayed to the node that owns their room (``node``), every message
between nodes sealed and checked (``wire``), Redis reached with TLS and an ACL user
(``connection``), and workers started again when they die (``serving``)."""
