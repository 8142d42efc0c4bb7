package testbed

import (
	"os"
	"os/exec"
	"testing"
)

// RequireRoot skips the test unless it runs as root with ip, nft and
// ethtool at hand. Under CI (CI=true) it fails instead: a skipped
// integration test there is a test that did not run.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "integration tests need root: they make network namespaces, veths and nftables rules (run ./scripts/test as root)"
	} else {
		for _, tool := range []string{"ip", "nft", "ethtool"} {
			if _, err := exec.LookPath(tool); err != nil {
				reason = "integration tests need " + tool + " (./scripts/test installs it)"
				break
			}
		}
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal(reason)
	}
	tb.Skip(reason)
}

// NewT calls RequireRoot and builds a bed tied to tb: it is closed when the
// test ends, after dumping the node logs if the test failed.
func NewT(tb testing.TB, opts Options) *Bed {
	tb.Helper()
	RequireRoot(tb)
	opts.TB = tb
	b, err := New(tb.Context(), opts)
	if err != nil {
		tb.Fatalf("test bed: %v", err)
	}
	return b
}
