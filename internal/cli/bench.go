package cli

import (
	"fmt"
	"io"
)

func runBench(args []string, stdout, stderr io.Writer) error {
	return fmt.Errorf("im bench: not built yet")
}
