package testbed

import "testing"

func TestParseEthtoolFeatures(t *testing.T) {
	out := `Features for rb3fa1-g3:
rx-checksumming: off [fixed]
tcp-segmentation-offload: on
	tx-tcp-segmentation: on
	tx-tcp6-segmentation: off [requested on]
generic-receive-offload: on
large-receive-offload: off [fixed]
`
	got, err := parseEthtoolFeatures(out)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"rx-checksumming":          false,
		"tcp-segmentation-offload": true,
		"tx-tcp-segmentation":      true,
		"tx-tcp6-segmentation":     false,
		"generic-receive-offload":  true,
		"large-receive-offload":    false,
	}
	if len(got) != len(want) {
		t.Errorf("got %d features, want %d: %v", len(got), len(want), got)
	}
	for name, on := range want {
		if v, ok := got[name]; !ok || v != on {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, on)
		}
	}
	if _, err := parseEthtoolFeatures("Features for x:\n"); err == nil {
		t.Error("no features: want an error")
	}
}
