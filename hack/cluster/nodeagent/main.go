// nodeagent is the process node of the local test cluster (hack/cluster): it registers a Node,
// keeps its Lease fresh and runs the pods bound to it as local processes. Node status, lease and
// pod-status plumbing come from virtual-kubelet's node package; this program is its provider.
//
//	nodeagent run [flags]     the agent
//	nodeagent shim SPECFILE   internal: set up a container's bind mounts, then exec it
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: nodeagent run [flags] | nodeagent shim SPECFILE")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runAgent(os.Args[2:])
	case "shim":
		err = runShim(os.Args[2:])
		if err != nil {
			// The shim's stderr is the container log: say what failed there, exit like a
			// runtime that could not start the container.
			fmt.Fprintf(os.Stderr, "nodeagent shim: %v\n", err)
			os.Exit(128)
		}
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nodeagent: %v\n", err)
		os.Exit(1)
	}
}
