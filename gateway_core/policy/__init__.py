"""Gateway policy: resources, authorisations with expiry, filters, DNS-resource NAT, flows, p2p control.

Pure building blocks of the data path of Firezone's ``rust/connlib/tunnel/src/gateway/``
(``client_on_gateway.rs``, ``filter_engine.rs``, ``nat_table.rs``, ``flow_tracker.rs``) and
``rust/connlib/tunnel/src/peer_store.rs``; the gateway facade composes them.
"""
