package testutil

import "go.uber.org/goleak"

// LeakOptions are goleak's options for the packages whose tests run nodes
// in-process (server.New): memberlist's probe of one node
// (Memberlist.probeNode) outlives Memberlist.Shutdown by up to one probe
// interval, waiting out its ack timer (1s with the tests' settings), and
// goleak looks again for only about 0.4s. Only that function is let go:
// a memberlist never shut down still leaves its listeners and handlers,
// which goleak reports.
func LeakOptions(opts ...goleak.Option) []goleak.Option {
	return append(opts, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}
