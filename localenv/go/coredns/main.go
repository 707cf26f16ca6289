// Command coredns is CoreDNS with only the plugins the local cluster's Corefile uses (written by
// localenv/localkube/incluster.py): cluster DNS for the real node's pods, answered from the API
// server, and NXDOMAIN for every other name (no forward plugin: test traffic stays on this machine).
// Importing github.com/coredns/coredns/core/plugin would compile in all of CoreDNS's plugins
// (cloud SDKs, etcd, dnstap, ...): a build several times as long for nothing the cluster uses.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// Each plugin registers itself in init(); dnsserver.Directives below allows and orders them.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

// directives: the plugins a Corefile may use, in the order they handle a query (a subset of
// CoreDNS's own plugin.cfg, in its order).
var directives = []string{
	"bind",
	"ready",
	"errors",
	"cache",
	"template",
	"kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
