//go:build linux

package procmem

import (
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestExecutableMappings(t *testing.T) {
	const exe = "/usr/bin/imwatch"
	maps := `00400000-0156c000 r-xp 00000000 fe:00 9994444                            /usr/bin/imwatch
0156c000-027db000 r--p 0116c000 fe:00 9994444                            /usr/bin/imwatch
027db000-02897000 rw-p 023db000 fe:00 9994444                            /usr/bin/imwatch
02897000-048e8000 rw-p 00000000 00:00 0
7fce35cdb000-7fce35e31000 r-xp 00026000 fe:00 326269                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000000000-7f0000001000 r--s 00000000 fe:00 9994444                    /usr/bin/imwatch
7f0000002000-7f0000003000 r--p 00000000 fe:00 1                          /usr/bin/imwatch-other
garbage line
zz-yy r--p 00000000 fe:00 9994444 /usr/bin/imwatch
`
	got := executableMappings([]byte(maps), exe)
	want := []mapping{{0x400000, 0x156c000}, {0x156c000, 0x27db000}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("mappings = %#v, want %#v (only the private read-only mappings of the executable)", got, want)
	}
}

func TestReleaseStartupPagesShrinksResidentFilePages(t *testing.T) {
	before := rssFileKB(t)
	st, err := ReleaseStartupPages()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFileKB(t)
	if st.Mappings == 0 || st.Bytes == 0 {
		t.Fatalf("released nothing: %+v", st)
	}
	if after >= before {
		t.Fatalf("RssFile %d kB after release, %d kB before: want it smaller", after, before)
	}
}

func rssFileKB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}
