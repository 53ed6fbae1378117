"""Email to patients and family members through the clinic's SMTP relay (``VIO_SMTP_URL``).

``models`` is the outbox; ``outbox`` queues (with the cause, once per key) and takes messages
(one sender each); ``due`` decides what is due when (pure); ``compose`` writes a message and its
calendar entry (pure); ``letters`` makes a queued message ready; ``relay`` talks to the relay;
``sender`` is the server's task that sends; ``links`` and ``answers`` are the unsubscribe and
"I can't make it" links and what they do.

Errors: ``compose.AddressProblem`` (an address vio will not write to), ``links.LinkUnsealable``
(a sealed link that does not open with this install's key), ``ValueError`` from
``relay.parse_relay_url`` (a bad ``VIO_SMTP_URL``, as ``SettingsError`` at start-up); what the
relay does is never raised, but returned as a ``relay.Reply``.
"""
