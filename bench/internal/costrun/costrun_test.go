package costrun

import "testing"

func TestMedianCI(t *testing.T) {
	xs := make([]float64, 30)
	for i := range xs {
		xs[i] = float64(30 - i) // 30, 29, ..., 1: sorted inside
	}
	// n = 30: P(B <= 9) = 0.021, P(B <= 10) = 0.049, so the interval is x(10), x(21).
	if lo, med, hi := MedianCI(xs); lo != 10 || med != 15.5 || hi != 21 {
		t.Errorf("MedianCI(1..30) = %v, %v, %v; want 10, 15.5, 21", lo, med, hi)
	}
	// n = 8: P(B <= 0) = 0.004, P(B <= 1) = 0.035: x(1), x(8).
	if lo, _, hi := MedianCI([]float64{5, 1, 2, 3, 4, 6, 7, 8}); lo != 1 || hi != 8 {
		t.Errorf("MedianCI(1..8) = %v..%v; want 1..8", lo, hi)
	}
	// n = 9: P(B <= 1) = 0.0195: x(2), x(8).
	if lo, _, hi := MedianCI([]float64{1, 2, 3, 4, 5, 6, 7, 8, 9}); lo != 2 || hi != 8 {
		t.Errorf("MedianCI(1..9) = %v..%v; want 2..8", lo, hi)
	}
	if lo, med, hi := MedianCI(nil); lo != 0 || med != 0 || hi != 0 {
		t.Errorf("MedianCI(nil) = %v, %v, %v", lo, med, hi)
	}
}
