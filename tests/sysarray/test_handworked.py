"""Small cases worked out by hand, with the arithmetic in the comments (docs/design.md §2.7).

Each expected matrix below was computed on paper from design.md "Chip semantics" and is checked
exactly against the naive reference and against both real engines.

Most cases use one GEMM on a 2 x 2 array::

    A = [[1, 2, 3],      W = [[1, 2],      Y = A @ W = [[22, 28],
         [4, 5, 6]]           [3, 4],                   [49, 64]]
                              [5, 6]]

    22 = 1*1 + 2*3 + 3*5    28 = 1*2 + 2*4 + 3*6    49 = 4*1 + 5*3 + 6*5    64 = 4*2 + 5*4 + 6*6

WS on 2 x 2 (rows hold K, columns hold N, M streams): K = 3 gives two K folds.
  fold 0: PE (0, c) holds W[0, c], PE (1, c) holds W[1, c]; row 0 streams A[m, 0], row 1 A[m, 1].
  fold 1: PE (0, c) holds W[2, c]; row 1 is padding (k = 3): weight 0, activation 0.
  Column c: p0 = a(row 0) * w(0, c), p1 = p0 + a(row 1) * w(1, c) leaves the array;
  Y[m, c] = p1(fold 0) + p1(fold 1). Fault-free:
    m=0 c=0: fold 0 p0 = 1, p1 = 1 + 2*3 = 7;   fold 1 p0 = 3*5 = 15, p1 = 15   -> 22
    m=0 c=1: fold 0 p0 = 2, p1 = 2 + 2*4 = 10;  fold 1 p0 = 3*6 = 18, p1 = 18   -> 28
    m=1 c=0: fold 0 p0 = 4, p1 = 4 + 5*3 = 19;  fold 1 p0 = 6*5 = 30, p1 = 30   -> 49
    m=1 c=1: fold 0 p0 = 8, p1 = 8 + 5*4 = 28;  fold 1 p0 = 6*6 = 36, p1 = 36   -> 64

OS on 2 x 2 (one fold): PE (r, c) owns Y[r, c]; row r streams A[r, k] east, column c streams
W[k, c] south, k = 0, 1, 2; the accumulator adds A[r, k] * W[k, c] at each step.

IS on 2 x 2 (rows hold K, columns hold M, N streams): two K folds.
  fold 0: stationary act PE (0, 0) = A[0, 0] = 1, PE (0, 1) = A[1, 0] = 4,
          PE (1, 0) = A[0, 1] = 2, PE (1, 1) = A[1, 1] = 5; row 0 streams W[0, n], row 1 W[1, n].
  fold 1: PE (0, 0) = A[0, 2] = 3, PE (0, 1) = A[1, 2] = 6; row 1 is padding (act 0, weight 0).
  Column c's psum gives Y[m = c, n].
"""
from __future__ import annotations

import numpy as np
import pytest

import sysarray
from sysarray import ArrayConfig, FaultMap
from tests.naive import naive_gemm

A = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int8)
W = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int8)
Y0 = [[22, 28], [49, 64]]

# A one-fold 2 x 2 problem: Y = [[1*1 + 2*3, 1*2 + 2*4], [3*1 + 4*3, 3*2 + 4*4]] = [[7, 10], [15, 22]].
A2 = np.array([[1, 2], [3, 4]], dtype=np.int8)
W2 = np.array([[1, 2], [3, 4]], dtype=np.int8)

B19 = 1 << 19  # 524288
B31 = 1 << 31  # 2147483648


@pytest.fixture(params=["naive", "cycle", "fast"])
def run(request):
    """``run(a, w, cfg, faults) -> Y`` for the naive reference and each real engine."""
    engine = request.param
    if engine == "naive":
        return naive_gemm
    if not hasattr(sysarray, "simulate_gemm"):
        pytest.skip("simulate_gemm not available yet")

    def _run(a, w, cfg, faults):
        y, _ = sysarray.simulate_gemm(a, w, cfg, faults=faults, engine=engine)
        return np.asarray(y)

    return _run


def check(run, a, w, cfg, faults, expected):
    y = run(a, w, cfg, faults)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, np.array(expected, dtype=np.int64))


# ============================================================================ WS
def test_ws_weight_sign_bit_stuck_at_1(run):
    # PE (1, 0) weight bit 7 stuck at 1.
    # fold 0: it holds W[1, 0] = 3 = 0b0000_0011 -> 0b1000_0011 = 131 -> signed -125.
    # fold 1: it holds padding 0 -> 0b1000_0000 = -128, but row 1's activation is 0 there.
    # m=0: fold 0 1*1 + 2*(-125) = -249; fold 1 3*5 + 0*(-128) = 15  -> -234
    # m=1: fold 0 4*1 + 5*(-125) = -621; fold 1 6*5 = 30               -> -591
    fm = FaultMap(2, 2).add(1, 0, "weight", 7, 1)
    check(run, A, W, ArrayConfig(2, 2, "ws"), fm, [[-234, 28], [-591, 64]])


def test_ws_act_fault_propagates_east_not_west(run):
    # 2 x 3 array, one fold: A2 (2x2) @ W3 (2x3); fault-free Y = [[9, 12, 15], [19, 26, 33]].
    # PE (1, 1) act bit 0 stuck at 1. Row 1 streams A[m, 1]: m=0: 2 -> 3, m=1: 4 -> 5 at PE (1, 1),
    # and PE (1, 2) receives that latched value; PE (1, 0) (west) sees the true 2 and 4.
    # Y[0] = [1*1 + 2*4, 1*2 + 3*5, 1*3 + 3*6] = [9, 17, 21]
    # Y[1] = [3*1 + 4*4, 3*2 + 5*5, 3*3 + 5*6] = [19, 31, 39]
    w3 = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int8)
    fm = FaultMap(2, 3).add(1, 1, "act", 0, 1)
    check(run, A2, w3, ArrayConfig(2, 3, "ws"), fm, [[9, 17, 21], [19, 31, 39]])


@pytest.mark.parametrize(
    "psum_bits, bit, expected",
    [
        # PE (0, 0) psum bit 31 stuck at 1 (32-bit psum), one fold, healthy PE (1, 0) below it.
        # m=0: p0 = 1 -> 1 - 2^31; p1 = 1 - 2^31 + 2*3 = 7 - 2^31   (healthy: adds, no re-force)
        # m=1: p0 = 3 -> 3 - 2^31; p1 = 3 - 2^31 + 4*3 = 15 - 2^31
        (32, 31, [[7 - B31, 10], [15 - B31, 22]]),
        # The same with a 20-bit psum and bit 19: 7 - 2^19 = -524281, 15 - 2^19 = -524273.
        (20, 19, [[7 - B19, 10], [15 - B19, 22]]),
    ],
)
def test_ws_psum_sign_bit_stuck_at_1(run, psum_bits, bit, expected):
    fm = FaultMap(2, 2).add(0, 0, "psum", bit, 1)
    check(run, A2, W2, ArrayConfig(2, 2, "ws", psum_bits=psum_bits), fm, expected)


def test_ws_psum_sign_bit_20_over_two_folds(run):
    # PE (1, 0) psum bit 19 stuck at 1, 20-bit psum, K = 3 -> two folds, each forced once.
    # m=0: fold 0 p1 = 7 -> 7 - 2^19; fold 1 p1 = 15 -> 15 - 2^19; sum = 22 - 2^20 = -1048554
    # m=1: fold 0 19 - 2^19; fold 1 30 - 2^19; sum = 49 - 2^20 = -1048527
    fm = FaultMap(2, 2).add(1, 0, "psum", 19, 1)
    check(run, A, W, ArrayConfig(2, 2, "ws", psum_bits=20), fm, [[22 - (1 << 20), 28], [49 - (1 << 20), 64]])


def test_ws_psum_sign_bit_32_over_two_folds_wraps_back(run):
    # PE (1, 0) psum bit 31 stuck at 1, 32-bit psum, two folds: each fold leaves v - 2^31.
    # m=0: (7 - 2^31) + (15 - 2^31) = 22 - 2^32, which the int32 accumulator wraps to 22.
    # m=1: (19 - 2^31) + (30 - 2^31) = 49 - 2^32 -> 49. The outer accumulation wraps in int32.
    fm = FaultMap(2, 2).add(1, 0, "psum", 31, 1)
    check(run, A, W, ArrayConfig(2, 2, "ws"), fm, Y0)


def test_ws_psum_low_bit_stuck_at_0(run):
    # PE (1, 0) psum bit 0 stuck at 0 (the bottom of column 0).
    # m=0: fold 0 p1 = 7 = 0b111 -> 0b110 = 6; fold 1 p1 = 15 -> 14            -> 20
    # m=1: fold 0 p1 = 19 = 0b10011 -> 18;     fold 1 p1 = 30 (even) -> 30      -> 48
    fm = FaultMap(2, 2).add(1, 0, "psum", 0, 0)
    check(run, A, W, ArrayConfig(2, 2, "ws"), fm, [[20, 28], [48, 64]])


def test_ws_psum_fault_in_row_unused_by_partial_fold(run):
    # PE (1, 0) psum bit 5 (32) stuck at 1. In fold 1 row 1 is padding, yet the psum passes it.
    # m=0: fold 0 p1 = 7 = 0b000111 -> 0b100111 = 39; fold 1 p1 = 15 + 0*0 = 15 -> 47  -> 86
    # m=1: fold 0 p1 = 19 = 0b010011 -> 51;            fold 1 p1 = 30 -> 62           -> 113
    # (skipping the padded row in fold 1 would wrongly give 39 + 15 = 54 and 51 + 30 = 81)
    fm = FaultMap(2, 2).add(1, 0, "psum", 5, 1)
    check(run, A, W, ArrayConfig(2, 2, "ws"), fm, [[86, 28], [113, 64]])


def test_ws_padded_zeros_are_forced(run):
    # PE (1, 0): act bit 0 stuck at 1 and weight bit 0 stuck at 1 (two faults in one PE).
    # fold 0, row 1: act A[0, 1] = 2 -> 3, A[1, 1] = 5 -> 5, passed on to PE (1, 1);
    #                weight at PE (1, 0): 3 -> 3; PE (1, 1) keeps its healthy W[1, 1] = 4.
    # fold 1, row 1 (padding): act 0 -> 1 (also passed to PE (1, 1)); weight at PE (1, 0): 0 -> 1;
    #                weight at PE (1, 1) stays 0.
    # m=0 c=0: fold 0 1*1 + 3*3 = 10; fold 1 3*5 + 1*1 = 16  -> 26
    # m=0 c=1: fold 0 1*2 + 3*4 = 14; fold 1 3*6 + 1*0 = 18  -> 32
    # m=1 c=0: fold 0 4*1 + 5*3 = 19; fold 1 6*5 + 1*1 = 31  -> 50
    # m=1 c=1: fold 0 4*2 + 5*4 = 28; fold 1 6*6 + 1*0 = 36  -> 64
    fm = FaultMap(2, 2).add(1, 0, "act", 0, 1).add(1, 0, "weight", 0, 1)
    check(run, A, W, ArrayConfig(2, 2, "ws"), fm, [[26, 32], [50, 64]])


def test_ws_fault_in_unused_column_is_harmless(run):
    # N = 1 uses column 0 only; column 1's stuck bits never reach an output (the act fault at
    # (0, 1) has nothing east of it). Y = A @ W[:, :1] = [[22], [49]].
    fm = FaultMap(2, 2).add(0, 1, "weight", 7, 1).add(0, 1, "act", 0, 1).add(1, 1, "psum", 31, 1)
    check(run, A, np.ascontiguousarray(W[:, :1]), ArrayConfig(2, 2, "ws"), fm, [[22], [49]])


@pytest.mark.parametrize(
    "act_dtype, expected",
    [
        # uint8 read back unsigned: 1 -> 129, 3 -> 131, 4 -> 132, 6 -> 134 (row 0 carries A[m, 0]
        # in fold 0 and A[m, 2] in fold 1; PE (0, 0) is the west end, so both columns see them).
        # Y[0] = [129*1 + 2*3 + 131*5, 129*2 + 2*4 + 131*6] = [790, 1052]
        # Y[1] = [132*1 + 5*3 + 134*5, 132*2 + 5*4 + 134*6] = [817, 1088]
        (np.uint8, [[790, 1052], [817, 1088]]),
        # The same bits read signed with int8: 1 -> -127, 3 -> -125, 4 -> -124, 6 -> -122.
        # Y[0] = [-127 + 6 - 625, -254 + 8 - 750] = [-746, -996]
        # Y[1] = [-124 + 15 - 610, -248 + 20 - 732] = [-719, -960]
        (np.int8, [[-746, -996], [-719, -960]]),
    ],
)
def test_ws_act_bit7_stuck_at_1_signedness(run, act_dtype, expected):
    fm = FaultMap(2, 2).add(0, 0, "act", 7, 1)
    check(run, A.astype(act_dtype), W, ArrayConfig(2, 2, "ws"), fm, expected)


def test_ws_uint8_act_bit7_stuck_at_0_east_only(run):
    # A[0, 0] = 200 (uint8). PE (0, 1) act bit 7 stuck at 0: 200 = 0b1100_1000 -> 0b0100_1000 = 72.
    # PE (0, 0) (west) multiplies the true 200: Y[0, 0] = 200*1 + 2*3 + 3*5 = 221.
    # PE (0, 1): Y[0, 1] = 72*2 + 2*4 + 3*6 = 144 + 8 + 18 = 170. Other row-0 acts are < 128.
    a = np.array([[200, 2, 3], [4, 5, 6]], dtype=np.uint8)
    fm = FaultMap(2, 2).add(0, 1, "act", 7, 0)
    check(run, a, W, ArrayConfig(2, 2, "ws"), fm, [[221, 170], [49, 64]])


def test_ws_two_psum_faults_in_one_column_in_order(run):
    # PE (0, 0) psum bit 0 stuck at 1, then PE (1, 0) psum bit 1 stuck at 0, in the order the
    # partial sum passes them (top first).
    # m=0: fold 0 p0 = 1 -> 1; p1 = 1 + 6 = 7 = 0b111 -> 0b101 = 5
    #      fold 1 p0 = 15 -> 15; p1 = 15 = 0b1111 -> 0b1101 = 13                  -> 18
    # m=1: fold 0 p0 = 4 -> 5; p1 = 5 + 15 = 20 = 0b10100 -> 20
    #      fold 1 p0 = 30 -> 31; p1 = 31 = 0b11111 -> 0b11101 = 29                -> 49
    # (the other order, bit 1 cleared first and bit 0 set last, would give m=0: 7 + 15 = 22)
    fm = FaultMap(2, 2).add(0, 0, "psum", 0, 1).add(1, 0, "psum", 1, 0)
    check(run, A, W, ArrayConfig(2, 2, "ws"), fm, [[18, 28], [49, 64]])


def test_ws_bypass(run):
    # Bypass: PE (0, 1) (act fault) and PE (1, 0) (psum sign fault) forward their inputs and add
    # nothing, so their weights count as 0: PE (0, 1) held W[0, 1] and W[2, 1], PE (1, 0) held
    # W[1, 0] (and padding).
    # Y[m, 0] = A[m, 0]*1 + A[m, 2]*5: [1 + 15, 4 + 30] = [16, 34]
    # Y[m, 1] = A[m, 1]*4:             [8, 20]
    fm = FaultMap(2, 2).add(0, 1, "act", 0, 1).add(1, 0, "psum", 31, 1)
    check(run, A, W, ArrayConfig(2, 2, "ws", bypass=True), fm, [[16, 8], [34, 20]])


# ============================================================================ OS
def test_os_weight_fault_propagates_south(run):
    # PE (0, 1) weight bit 7 stuck at 1: column 1 weights [2, 4, 6] -> [-126, -124, -122]
    # (2 = 0b0000_0010 -> 0b1000_0010 = 130 -> -126), used by PE (0, 1) and passed to PE (1, 1).
    # Y[0, 1] = 1*(-126) + 2*(-124) + 3*(-122) = -126 - 248 - 366 = -740
    # Y[1, 1] = 4*(-126) + 5*(-124) + 6*(-122) = -504 - 620 - 732 = -1856
    # PE (1, 0) weight bit 0 stuck at 0: column 0 weights [1, 3, 5] -> [0, 2, 4] at PE (1, 0) only
    # (nothing south of it; PE (0, 0) north of it keeps the true ones: Y[0, 0] = 22).
    # Y[1, 0] = 4*0 + 5*2 + 6*4 = 34
    fm = FaultMap(2, 2).add(0, 1, "weight", 7, 1).add(1, 0, "weight", 0, 0)
    check(run, A, W, ArrayConfig(2, 2, "os"), fm, [[22, -740], [34, -1856]])


def test_os_two_weight_faults_in_one_column_in_order(run):
    # PE (0, 1) weight bit 7 stuck at 1, PE (1, 1) weight bit 7 stuck at 0. Weights move south,
    # so Y[0, 1] sees [-126, -124, -122] -> -740 (as above); PE (1, 1) then clears bit 7 again:
    # -126 = 0b1000_0010 -> 0b0000_0010 = 2, so Y[1, 1] = 64. (Reversed order would give -1856.)
    fm = FaultMap(2, 2).add(0, 1, "weight", 7, 1).add(1, 1, "weight", 7, 0)
    check(run, A, W, ArrayConfig(2, 2, "os"), fm, [[22, -740], [49, 64]])


def test_os_act_fault_propagates_east(run):
    # PE (1, 0) act bit 1 stuck at 1: row 1 acts [4, 5, 6] = [0b100, 0b101, 0b110] -> [6, 7, 6],
    # used by PE (1, 0) and PE (1, 1).
    # Y[1, 0] = 6*1 + 7*3 + 6*5 = 6 + 21 + 30 = 57;  Y[1, 1] = 6*2 + 7*4 + 6*6 = 12 + 28 + 36 = 76
    # PE (0, 1) act bit 0 stuck at 0: row 0 acts [1, 2, 3] -> [0, 2, 2] at PE (0, 1) only; PE (0, 0)
    # (west) keeps Y[0, 0] = 22.  Y[0, 1] = 0*2 + 2*4 + 2*6 = 20
    fm = FaultMap(2, 2).add(1, 0, "act", 1, 1).add(0, 1, "act", 0, 0)
    check(run, A, W, ArrayConfig(2, 2, "os"), fm, [[22, 20], [57, 76]])


def test_os_accumulator_low_bits_forced_every_step(run):
    # PE (0, 0) psum bit 0 stuck at 1: clear 0 -> 1; k=0: 1 + 1*1 = 2 -> 3; k=1: 3 + 2*3 = 9 -> 9;
    #   k=2: 9 + 3*5 = 24 -> 25.  (Forcing only the final 22 would give 23.)
    # PE (1, 1) psum bit 2 stuck at 0: clear 0; k=0: 0 + 4*2 = 8 -> 8; k=1: 8 + 5*4 = 28 = 0b11100
    #   -> 0b11000 = 24; k=2: 24 + 6*6 = 60 = 0b111100 -> 0b111000 = 56.  (Final-only: 64 -> 64.)
    fm = FaultMap(2, 2).add(0, 0, "psum", 0, 1).add(1, 1, "psum", 2, 0)
    check(run, A, W, ArrayConfig(2, 2, "os"), fm, [[25, 28], [49, 56]])


@pytest.mark.parametrize(
    "psum_bits, bit, expected",
    [
        # PE (0, 0) psum bit 31 stuck at 1: the clear reads -2^31; then +1, +6, +15 keep bit 31 set:
        # -2^31 + 22 = -2147483626.
        (32, 31, [[22 - B31, 28], [49, 64]]),
        # 20-bit accumulator, bit 19: -2^19 + 22 = -524266.
        (20, 19, [[22 - B19, 28], [49, 64]]),
    ],
)
def test_os_accumulator_sign_bit_stuck_at_1(run, psum_bits, bit, expected):
    fm = FaultMap(2, 2).add(0, 0, "psum", bit, 1)
    check(run, A, W, ArrayConfig(2, 2, "os", psum_bits=psum_bits), fm, expected)


def test_os_fault_in_unused_column_is_harmless(run):
    # N = 1: column 1 owns no output; its weight, act and psum faults change nothing.
    fm = FaultMap(2, 2).add(0, 1, "weight", 7, 1).add(0, 1, "act", 0, 1).add(1, 1, "psum", 31, 1)
    check(run, A, np.ascontiguousarray(W[:, :1]), ArrayConfig(2, 2, "os"), fm, [[22], [49]])


def test_os_uint8_act_bit7(run):
    # A[0, 0] = 200 (uint8). PE (0, 0) act bit 7 stuck at 0: 200 -> 72 for both PEs of row 0.
    # Y[0, 0] = 72*1 + 2*3 + 3*5 = 93;  Y[0, 1] = 72*2 + 2*4 + 3*6 = 170
    # PE (1, 1) act bit 7 stuck at 1, read back unsigned: [4, 5, 6] -> [132, 133, 134] at PE (1, 1).
    # Y[1, 0] = 49 (west);  Y[1, 1] = 132*2 + 133*4 + 134*6 = 264 + 532 + 804 = 1600
    a = np.array([[200, 2, 3], [4, 5, 6]], dtype=np.uint8)
    fm = FaultMap(2, 2).add(0, 0, "act", 7, 0).add(1, 1, "act", 7, 1)
    check(run, a, W, ArrayConfig(2, 2, "os"), fm, [[93, 170], [49, 1600]])


def test_os_bypass(run):
    # Bypass: outputs owned by faulty PEs (0, 1) and (1, 0) read 0; PE (0, 1) passes the column-1
    # weights south unforced, so Y[1, 1] = 64 (without bypass its bit-7 fault would give -1856).
    fm = FaultMap(2, 2).add(0, 1, "weight", 7, 1).add(1, 0, "psum", 0, 1)
    check(run, A, W, ArrayConfig(2, 2, "os", bypass=True), fm, [[22, 0], [0, 64]])


# ============================================================================ IS
def test_is_stationary_act_fault_stays_put(run):
    # PE (0, 0) act bit 2 stuck at 1: fold 0 holds A[0, 0] = 1 = 0b001 -> 0b101 = 5,
    # fold 1 holds A[0, 2] = 3 = 0b011 -> 0b111 = 7. A stationary input is not passed east.
    # Y[0, n] = 5*W[0, n] + 2*W[1, n] + 7*W[2, n]: n=0: 5 + 6 + 35 = 46; n=1: 10 + 8 + 42 = 60
    fm = FaultMap(2, 2).add(0, 0, "act", 2, 1)
    check(run, A, W, ArrayConfig(2, 2, "is"), fm, [[46, 60], [49, 64]])


def test_is_streamed_weight_fault_propagates_east(run):
    # PE (1, 0) weight bit 0 stuck at 1: row 1 streams W[1, n] = [3, 4] -> [3, 5] in fold 0, passed
    # on to PE (1, 1); in fold 1 row 1 streams padding 0 -> 1, times stationary padding 0.
    # PE (0, 1) weight bit 0 stuck at 1: row 0 streams W[0, n] = [1, 2] -> [1, 3] (fold 0) and
    # W[2, n] = [5, 6] -> [5, 7] (fold 1) at PE (0, 1) only; PE (0, 0) (west) sees true weights.
    # Y[0, 0] = 1*1 + 2*3 + 3*5 = 22        Y[0, 1] = 1*2 + 2*5 + 3*6 = 30
    # Y[1, 0] = 4*1 + 5*3 + 6*5 = 49        Y[1, 1] = 4*3 + 5*5 + 6*7 = 12 + 25 + 42 = 79
    fm = FaultMap(2, 2).add(1, 0, "weight", 0, 1).add(0, 1, "weight", 0, 1)
    check(run, A, W, ArrayConfig(2, 2, "is"), fm, [[22, 30], [49, 79]])


def test_is_psum_low_bit_stuck_at_1(run):
    # PE (0, 0) psum bit 0 stuck at 1 (top of column 0, i.e. m = 0).
    # n=0: fold 0 p0 = 1*1 = 1 -> 1, p1 = 1 + 2*3 = 7; fold 1 p0 = 3*5 = 15 -> 15, p1 = 15  -> 22
    # n=1: fold 0 p0 = 1*2 = 2 -> 3, p1 = 3 + 2*4 = 11; fold 1 p0 = 3*6 = 18 -> 19, p1 = 19 -> 30
    fm = FaultMap(2, 2).add(0, 0, "psum", 0, 1)
    check(run, A, W, ArrayConfig(2, 2, "is"), fm, [[22, 30], [49, 64]])


def test_is_psum_fault_in_row_unused_by_partial_fold(run):
    # PE (1, 1) psum bit 3 (8) stuck at 1 (bottom of column 1, i.e. m = 1); row 1 is padding in fold 1.
    # n=0: fold 0 p1 = 4*1 + 5*3 = 19 = 0b10011 -> 0b11011 = 27; fold 1 p1 = 6*5 + 0 = 30 = 0b11110 -> 30
    #      -> 57
    # n=1: fold 0 p1 = 4*2 + 5*4 = 28 = 0b11100 -> 28; fold 1 p1 = 6*6 + 0 = 36 = 0b100100 -> 0b101100 = 44
    #      -> 72
    fm = FaultMap(2, 2).add(1, 1, "psum", 3, 1)
    check(run, A, W, ArrayConfig(2, 2, "is"), fm, [[22, 28], [57, 72]])


@pytest.mark.parametrize(
    "psum_bits, bit, expected",
    [
        # One fold (A2 @ W2 = [[7, 10], [15, 22]]). PE (1, 1) psum bit 31 stuck at 1: column 1 is
        # m = 1, whose psums 15 and 22 leave as 15 - 2^31 and 22 - 2^31.
        (32, 31, [[7, 10], [15 - B31, 22 - B31]]),
        # 20-bit psum, bit 19: 15 - 2^19 = -524273, 22 - 2^19 = -524266.
        (20, 19, [[7, 10], [15 - B19, 22 - B19]]),
    ],
)
def test_is_psum_sign_bit_stuck_at_1(run, psum_bits, bit, expected):
    fm = FaultMap(2, 2).add(1, 1, "psum", bit, 1)
    check(run, A2, W2, ArrayConfig(2, 2, "is", psum_bits=psum_bits), fm, expected)


def test_is_uint8_stationary_act_bit7(run):
    # uint8 A. PE (0, 0) act bit 7 stuck at 1, read back unsigned: A[0, 0] = 1 -> 129 (fold 0),
    # A[0, 2] = 3 -> 131 (fold 1). Only m = 0 lives in column 0.
    # Y[0, 0] = 129*1 + 2*3 + 131*5 = 790;  Y[0, 1] = 129*2 + 2*4 + 131*6 = 1052
    fm = FaultMap(2, 2).add(0, 0, "act", 7, 1)
    check(run, A.astype(np.uint8), W, ArrayConfig(2, 2, "is"), fm, [[790, 1052], [49, 64]])


def test_is_fault_in_unused_column_is_harmless(run):
    # M = 1 uses column 0 only (columns hold M); column 1's faults change nothing.
    fm = FaultMap(2, 2).add(0, 1, "weight", 7, 1).add(0, 1, "act", 7, 1).add(1, 1, "psum", 31, 1)
    check(run, np.ascontiguousarray(A[:1]), W, ArrayConfig(2, 2, "is"), fm, [[22, 28]])


def test_is_bypass(run):
    # Bypass: PE (0, 1) (act fault) held A[1, 0] = 4 and A[1, 2] = 6; PE (1, 0) (weight sign fault)
    # held A[0, 1] = 2; those inputs count as 0, and the row-1 weights pass PE (1, 0) unforced.
    # Y[0, n] = A[0, 0]*W[0, n] + A[0, 2]*W[2, n] = [1 + 15, 2 + 18] = [16, 20]
    # Y[1, n] = A[1, 1]*W[1, n] = [5*3, 5*4] = [15, 20]
    fm = FaultMap(2, 2).add(0, 1, "act", 0, 1).add(1, 0, "weight", 7, 1)
    check(run, A, W, ArrayConfig(2, 2, "is", bypass=True), fm, [[16, 20], [15, 20]])


# ============================================================================ psum overflow
@pytest.mark.parametrize(
    "dataflow, rows, k, psum_bits, expected",
    [
        # 32 products of (-128)*(-128) = 16384 in one column: 31*16384 = 507904 still fits 20 bits,
        # 32*16384 = 524288 = 2^19 wraps to -524288. WS/IS: 32 x 1 array, one fold; OS: 1 x 1 array.
        ("ws", 32, 32, 20, -B19),
        ("is", 32, 32, 20, -B19),
        ("os", 1, 32, 20, -B19),
        # 32-bit psum: no wrap.
        ("ws", 32, 32, 32, B19),
        ("os", 1, 32, 32, B19),
        # WS/IS on 16 x 1: two folds of 16*16384 = 262144 each, added outside in int32: 524288.
        ("ws", 16, 32, 20, B19),
        ("is", 16, 32, 20, B19),
        # OS, K = 33 with a last product of (-128)*127 = -16256: after 32 steps the accumulator
        # reads -524288, then -524288 - 16256 = -540544 wraps to -540544 + 2^20 = 508032, which is
        # exactly 524288 - 16256: the in-array wrap is modular.
        ("os", 1, 33, 20, 508032),
    ],
)
def test_psum_overflow_wraps(run, dataflow, rows, k, psum_bits, expected):
    a = np.full((1, k), -128, dtype=np.int8)
    w = np.full((k, 1), -128, dtype=np.int8)
    w[32:, 0] = 127
    check(run, a, w, ArrayConfig(rows, 1, dataflow, psum_bits=psum_bits), FaultMap(rows, 1), [[expected]])
