// Wrapper of go.etcd.io/etcd/server/v3's own main package (server/main.go), which cannot be built
// with `go install` because that module's go.mod has replace directives.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
