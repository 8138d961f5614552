"""Gateway policy: resources, authorisations with expiry, filters, DNS-resource NAT, flows, p2p control.

Pure building blocks of gateway-datapath.md §2, §4-§9 and §11.2; the gateway facade composes them.
"""
