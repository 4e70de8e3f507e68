//go:build linux

package procmem

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ReleaseStartupPages drops this process's page-table entries for the
// read-only, private mappings of its own executable (code and read-only data),
// so that its resident set is what it uses from now on rather than everything
// it touched while starting. Writable mappings are never touched: their pages
// may differ from the file.
func ReleaseStartupPages() (Stats, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return Stats{}, fmt.Errorf("find own executable: %w", err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return Stats{}, fmt.Errorf("read own mappings: %w", err)
	}
	var st Stats
	for _, m := range executableMappings(maps, exe) {
		if err := madviseDontNeed(m.start, m.end); err != nil {
			return st, fmt.Errorf("release %x-%x: %w", m.start, m.end, err)
		}
		st.Mappings++
		st.Bytes += int64(m.end - m.start)
	}
	return st, nil
}

type mapping struct{ start, end uintptr }

// executableMappings parses /proc/self/maps and returns the private mappings
// of path that are neither writable nor shared.
func executableMappings(maps []byte, path string) []mapping {
	var out []mapping
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// address perms offset dev inode pathname
		f := strings.Fields(sc.Text())
		if len(f) < 6 || strings.Join(f[5:], " ") != path {
			continue
		}
		perms := f[1]
		if len(perms) != 4 || perms[1] == 'w' || perms[3] != 'p' {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		out = append(out, mapping{uintptr(start), uintptr(end)})
	}
	return out
}

func madviseDontNeed(start, end uintptr) error {
	_, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_DONTNEED)
	if errno != 0 {
		return errno
	}
	return nil
}
