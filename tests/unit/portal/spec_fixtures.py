# ruff: noqa: E501  (wire fixtures are kept verbatim, one frame a line)
"""Wire fixtures of the portal protocol, taken from Firezone's tests
(``rust/connlib/phoenix-channel/tests/lib.rs``, ``rust/connlib/tunnel/src/messages/gateway.rs``) and the
portal's views (``elixir/apps/api/lib/api/gateway/views/``).

``…`` stands for shortened opaque strings; the request_connection fixture's elided
``"relays":[…]`` is written as ``[]`` to make it valid JSON (the gateway ignores that field).
"""

from __future__ import annotations

INIT_MINIMAL = """{"event":"init","ref":null,"topic":"gateway","payload":{"interface":{"ipv6":"fd00:2021:1111::2c:f6ab","ipv4":"100.115.164.78"},"config":{"ipv4_masquerade_enabled":true,"ipv6_masquerade_enabled":true}}}"""

INIT_FULL = """{"topic":"gateway","event":"init","ref":null,"payload":{
  "authorizations":[{"client_id":"3abd725a-733b-4801-ac16-72f26cd98a24","resource_id":"c7793628-8579-465b-83e3-1a5d4af4db3b","expires_at":1729813989}],
  "account_slug":"mycorp",
  "interface":{"ipv4":"100.115.164.78","ipv6":"fd00:2021:1111::2c:f6ab"},
  "relays":[
    {"id":"0a133356-7a9e-4b9a-b413-0d95a5720fd8","type":"turn","addr":"172.28.0.101:3478","username":"1719367575:ZQHcVGkdnfgGmcP1","password":"ZWYiBeFHOJyYq0mcwAXjRpcuXIJJpzWlOXVdxwttrWg","expires_at":1719367575},
    {"id":"0a133356-7a9e-4b9a-b413-0d95a5720fd8","type":"turn","addr":"[2001:db8::101]:3478","username":"1719367575:ZQHcVGkdnfgGmcP1","password":"ZWYiBeFHOJyYq0mcwAXjRpcuXIJJpzWlOXVdxwttrWg","expires_at":1719367575}],
  "config":{"ipv4_masquerade_enabled":true,"ipv6_masquerade_enabled":true}}}"""

AUTHORIZE_FLOW = """{"event":"authorize_flow","ref":null,"topic":"gateway","payload":{
 "client":{"id":"3abd725a-733b-4801-ac16-72f26cd98a24","ipv6":"fd00:2021:1111::f:853b","public_key":"fiAjSBWDgQfD1CFJkTwOf4zg+1QhH0eTT+oLaVIMpH8=","ipv4":"100.93.74.51","preshared_key":"BzPiNE9qszKczZcZzGsyieLYeJ2EQfkfdibls/l3beM="},
 "resource":{"id":"c7793628-8579-465b-83e3-1a5d4af4db3b","name":"MyCorp Network","type":"cidr","address":"172.20.0.0/16","filters":[]},
 "actor":{"id":"24eb631e-c529-4182-a746-d99ee66f7426"},
 "ref":"SFMyNTY.g2gDbQAAAkxnMmdH…5-aLUjF4RiPoYASwWYfSmWuTEc4cT0u8J9cyBUiP9BY",
 "expires_at":1729813989,
 "flow_id":"eeb66205-5f53-4f64-acbc-deed47293f04",
 "client_ice_credentials":{"username":"hgwh","password":"j2fqufatn7xlrrvv6fsvea"},
 "gateway_ice_credentials":{"username":"ejqt","password":"zfjrrjdkbci42t2axyd45a"}}}"""

REQUEST_CONNECTION = """{"event":"request_connection","ref":null,"topic":"gateway","payload":{
 "client":{"id":"2e5c0210-3ac0-49cd-bfc9-8005046291de",
   "peer":{"ipv6":"fd00:2021:1111::4:4616","public_key":"zHtdIFPDm8QQkqjbmAc1r8O1WegviA6UeUTP6rpminA=","ipv4":"100.87.247.184","persistent_keepalive":25,"preshared_key":"BzPiNE9qszKczZcZzGsyieLYeJ2EQfkfdibls/l3beM="},
   "payload":{"domain":{"name":"download.httpbin","proxy_ips":["100.96.0.1","100.96.0.2","100.96.0.3","100.96.0.4","fd00:2021:1111:8000::","fd00:2021:1111:8000::1","fd00:2021:1111:8000::2","fd00:2021:1111:8000::3"]},
              "ice_parameters":{"password":"MMceouYA5jGIPkxbvIiLvD","username":"aYaH"}}},
 "resource":{"id":"619fbe83-bc95-4635-9a08-68da9a944c88","name":"?.httpbin","type":"dns","address":"?.httpbin",
   "filters":[{"protocol":"tcp","port_range_end":80,"port_range_start":80},{"protocol":"tcp","port_range_end":433,"port_range_start":433},{"protocol":"udp","port_range_end":53,"port_range_start":53},{"protocol":"icmp"}]},
 "ref":"SFMyNTY.g2gDbQAAAVhn…MBccK7A6wR4EA1ZkKnGlHzAnh-tRitZ2d97q_IvzoD8",
 "expires_at":1718663242,"actor":{"id":"0f4a5f16-3c59-47c9-a7c1-31de7a51b26c"},
 "relays":[],"flow_id":"b944e68a-c936-4a81-bd8d-88c45efdcb2c"}}"""

ALLOW_ACCESS = """{"topic":"gateway","event":"allow_access","ref":null,"payload":{"ref":"SFMyNTY…","client_id":"3a25ff38-f8d7-47de-9b30-c7c40c206083","resource":{"id":"1106047c-cd5d-4151-b679-96b93da7383b","type":"internet"},"expires_at":1719367575,"payload":null,"client_ipv4":"100.114.114.30","client_ipv6":"fd00:2021:1111::3a:ab1b"}}"""

REJECT_ACCESS = """{"topic":"gateway","event":"reject_access","ref":null,"payload":{"client_id":"3a25ff38-f8d7-47de-9b30-c7c40c206083","resource_id":"ea6570d1-47c7-49d2-9dc3-efff1c0c9e0b"}}"""

RESOURCE_UPDATED = """{"event":"resource_updated","ref":null,"topic":"gateway","payload":{"id":"57f9ebbb-21d5-4f9f-bf86-b25122fc7a43","name":"?.httpbin","type":"dns","address":"?.httpbin","filters":[{"protocol":"icmp"},{"protocol":"tcp"}]}}"""

EXPIRY_UPDATED = """{"topic":"gateway","event":"access_authorization_expiry_updated","ref":null,"payload":{"client_id":"3a25ff38-f8d7-47de-9b30-c7c40c206083","resource_id":"ea6570d1-47c7-49d2-9dc3-efff1c0c9e0b","expires_at":1729813989}}"""

RELAYS_PRESENCE = """{"event":"relays_presence","ref":null,"topic":"gateway","payload":{
 "disconnected_ids":["e95f9517-2152-4677-a16a-fbb2687050a3","b0724bd1-a8cc-4faf-88cd-f21159cfec47"],
 "connected":[{"id":"0a133356-7a9e-4b9a-b413-0d95a5720fd8","type":"turn","username":"1719367575:ZQHcVGkdnfgGmcP1","password":"ZWYiBeFHOJyYq0mcwAXjRpcuXIJJpzWlOXVdxwttrWg","addr":"172.28.0.101:3478","expires_at":1719367575}]}}"""

INVALIDATE_ICE_CANDIDATES = """{"event":"invalidate_ice_candidates","ref":null,"topic":"gateway","payload":{"candidates":["candidate:7854631899965427361 1 udp 1694498559 172.28.0.100 47717 typ srflx"],"client_id":"2b1524e6-239e-4570-bc73-70a188e12101"}}"""

RESOURCES = """[{"id":"73037362-715d-4a83-a749-f18eadd970e6","type":"cidr","address":"172.172.0.0/16","name":"172.172.0.0/16","filters":[]},
 {"id":"03000143-e25e-45c7-aafb-144990e57dcd","type":"dns","name":"gitlab.mycorp.com","address":"gitlab.mycorp.com","filters":[]},
 {"id":"1106047c-cd5d-4151-b679-96b93da7383b","type":"internet","not":"relevant","some_other":["field"]}]"""

# Frames the gateway sends (join, heartbeat, flow_authorized, connection_ready, broadcast_ice_candidates),
# exact text.
JOIN = """{"topic":"gateway","event":"phx_join","payload":null,"ref":0}"""
HEARTBEAT = """{"topic":"phoenix","event":"heartbeat","payload":{},"ref":17}"""
FLOW_AUTHORIZED = (
    """{"topic":"gateway","event":"flow_authorized","payload":{"ref":"SFMyNTY.g2gD…"},"ref":5}"""
)
FLOW_AUTHORIZED_ASCII = (
    """{"topic":"gateway","event":"flow_authorized","payload":{"ref":"SFMyNTY.g2gDbQ"},"ref":5}"""
)
CONNECTION_READY = """{"topic":"gateway","event":"connection_ready","payload":{"ref":"SFMyNTY.g2gDbQAAAVhn…","gateway_payload":{"ConnectionAccepted":{"ice_parameters":{"username":"Xy7q","password":"…"}}}},"ref":9}"""
BROADCAST_ICE = """{"topic":"gateway","event":"broadcast_ice_candidates","payload":{"client_ids":["3abd725a-733b-4801-ac16-72f26cd98a24"],"candidates":["candidate:fffeff6435be70ddbf995982 1 udp 2130706431 10.0.0.5 52625 typ host ufrag ejqt","candidate:7854631899965427361 1 udp 1694498559 172.28.0.100 47717 typ srflx raddr 0.0.0.0 rport 0"]},"ref":14}"""

# Portal replies (phx_reply and other control events)
JOIN_OK = """{"topic":"gateway","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":0}"""
HEARTBEAT_OK = """{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":17}"""
PHX_ERROR = """{"topic":"gateway","event":"phx_error","payload":{},"ref":0}"""
PHX_CLOSE = """{"topic":"gateway","event":"phx_close","payload":{},"ref":0}"""
TOKEN_EXPIRED = """{"topic":"gateway","event":"disconnect","payload":{"reason":"token_expired"},"ref":null}"""
