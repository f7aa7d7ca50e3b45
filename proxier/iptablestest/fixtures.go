package iptablestest

// ForeignRules is an iptables-restore payload of rules that belong to
// others (kube-proxy's chain, Docker's chain, an SSH accept rule, a
// MASQUERADE rule): load it into a Fake with Load before a proxier runs,
// and check that cleanup leaves exactly this state behind.
const ForeignRules = `*nat
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j RETURN
-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE
COMMIT
*filter
:DOCKER - [0:0]
-A FORWARD -j DOCKER
-A DOCKER -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
`
