package overlay

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// A node remembers its ring links in a file in its state directory, so
// that after a restart it rejoins through peers it knew, even when every
// configured bootstrap node is gone.

// maxRemembered bounds the peers a node remembers.
const maxRemembered = 16

type rememberedPeer struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

// loadRemembered reads the peers a node remembered; a missing file is no
// error, and entries that do not parse are skipped.
func loadRemembered(path string) ([]peer.AddrInfo, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var list []rememberedPeer
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []peer.AddrInfo
	for _, rp := range list[:min(len(list), maxRemembered)] {
		id, err := peer.Decode(rp.ID)
		if err != nil {
			continue
		}
		info := peer.AddrInfo{ID: id}
		for _, a := range rp.Addrs {
			if m, err := ma.NewMultiaddr(a); err == nil {
				info.Addrs = append(info.Addrs, m)
			}
		}
		if len(info.Addrs) > 0 {
			out = append(out, info)
		}
	}
	return out, nil
}

// saveRemembered writes the peers atomically.
func saveRemembered(path string, peers []peer.AddrInfo) error {
	list := make([]rememberedPeer, 0, len(peers))
	for _, info := range peers[:min(len(peers), maxRemembered)] {
		rp := rememberedPeer{ID: info.ID.String()}
		for _, a := range info.Addrs {
			rp.Addrs = append(rp.Addrs, a.String())
		}
		slices.Sort(rp.Addrs)
		list = append(list, rp)
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".peers-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
