"""Linear CKA between the layers of two conditions (P2: cross-layer CKA on DTW-aligned pairs).

One layer's representations are `[n, d]` (n aligned pairs, d features); a stack of layers is `[L, n, d]`.
- Biased: HSIC = tr(K H L H) / (n-1)^2 with K = X X^T, i.e. ||Xc^T Yc||_F^2 / (n-1)^2 on column-centred X, Y.
- Unbiased: the estimator of Song et al. (2012), as in Nguyen, Raghu & Kornblith (2021), on the zero-diagonal
  Grams K~, L~: HSIC = [tr(K~L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)); needs n >= 4.
CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)). Both estimators ignore a shift of the features, which the code
uses: it centres the columns before forming Grams, and streams data minus a reference mean.

Three ways to get the `[L, M]` matrix of every (speech layer l, text layer m):
- `cross_layer_cka`: one shot, all pairs in memory; Gram or feature-space form, computed in float32 at least.
- `CKAAccumulator`: exact streaming; float64 feature-space sums, L*M*d_x*d_y*8 bytes whatever n.
- `MinibatchCKA`: Nguyen et al.'s minibatch estimator; memory bounded by one batch, not equal to the one-shot value.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .geometry import upcast

GRAM_MAX_BYTES = 2**31
"""`cross_layer_cka(form="auto")` picks the Gram form only if the L + M centred Grams fit in this many bytes."""


def _check_n(n: int, unbiased: bool) -> None:
    """ValueError unless there are enough items for the estimator (4 unbiased, 2 biased)."""
    least = 4 if unbiased else 2
    if n < least:
        raise ValueError(f"{'unbiased' if unbiased else 'biased'} CKA needs at least {least} items, got {n}")


def _check_pair(xs: Tensor, ys: Tensor) -> None:
    """ValueError unless xs `[L, n, d_x]` and ys `[M, n, d_y]` hold the same items."""
    if xs.ndim != 3 or ys.ndim != 3 or xs.shape[1] != ys.shape[1]:
        raise ValueError(f"expected [L, n, d_x] and [M, n, d_y] with the same n, got {tuple(xs.shape)} "
                         f"and {tuple(ys.shape)}")


def _scale(n: int, unbiased: bool) -> float:
    """Factor turning the raw inner product of centred Grams into HSIC."""
    return 1 / (n * (n - 3)) if unbiased else 1 / (n - 1) ** 2


def _song(tr: Tensor, k1: Tensor, l1: Tensor, kl1: Tensor, n: int) -> Tensor:
    """Song et al.'s bracket from tr(K~L~), 1'K~1, 1'L~1 and 1'K~L~1 of the zero-diagonal Grams."""
    return tr + k1 * l1 / ((n - 1) * (n - 2)) - 2 * kl1 / (n - 2)


def _cka(hxy: Tensor, hxx: Tensor, hyy: Tensor) -> Tensor:
    """CKA `[..., L, M]` from HSIC of every pair `[..., L, M]` and of every layer with itself, `[..., L]` and
    `[..., M]`."""
    return hxy / (hxx[..., :, None] * hyy[..., None, :]).sqrt()


def _gram(xc: Tensor, unbiased: bool) -> Tensor:
    """Centred Grams `[L, n, n]` of column-centred features `[L, n, d]`: H K H = Xc Xc^T (biased), or Kornblith's
    U-centred Gram (unbiased), whose inner products are Song's bracket. The zero-diagonal Xc Xc^T has row sums
    -||xc_i||^2, which gives the U-centring below."""
    k = xc @ xc.mT
    if unbiased:
        n = k.shape[-1]
        a = k.diagonal(dim1=-2, dim2=-1) / (n - 2)
        k += a[:, :, None]
        k += a[:, None, :]
        k -= (a.sum(-1) / (n - 1))[:, None, None]
        k.diagonal(dim1=-2, dim2=-1).zero_()
    return k


def _gram_raw(xc: Tensor, yc: Tensor, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Raw HSIC of every pair and layer from the centred Grams, all pairs from one batched product of the Grams'
    rows, `[n, L, n] @ [n, n, M]`: each row's n terms summed in the compute dtype, the n rows in float64 (one
    float32 sum of n^2 terms is off by ~1e-4)."""
    gx, gy = _gram(xc, unbiased), _gram(yc, unbiased)
    hxy = (gx.transpose(0, 1) @ gy.permute(1, 2, 0)).sum(0, dtype=torch.float64)
    hxx, hyy = (torch.linalg.vector_norm(g, dim=-1).square().sum(-1, dtype=torch.float64) for g in (gx, gy))
    return hxy.to(xc.dtype), hxx.to(xc.dtype), hyy.to(xc.dtype)


def _centred_raw(fro: Tensor, ab: Tensor, a: Tensor, b: Tensor, n: int, unbiased: bool) -> Tensor:
    """Raw HSIC from column-centred features: fro = ||Xc^T Yc||_F^2, ab = sum_i ||xc_i||^2 ||yc_i||^2, a and b the
    sums of squared row norms (then the zero-diagonal row sums are -||xc_i||^2 and 1'K~1 = -a)."""
    return _song(fro - ab, -a, -b, ab, n) if unbiased else fro


def _feature_raw(xc: Tensor, yc: Tensor, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Raw HSIC of every pair and layer from cross-covariances: one batched `[M, d_x, d_y]` product per layer l."""
    n = xc.shape[1]
    fro = torch.stack([torch.linalg.matrix_norm(x.mT @ yc).square() for x in xc])
    fro_x, fro_y = (torch.linalg.matrix_norm(z.mT @ z).square() for z in (xc, yc))
    a, b = xc.square().sum(-1), yc.square().sum(-1)
    sa, sb = a.sum(-1), b.sum(-1)
    return (_centred_raw(fro, a @ b.T, sa[:, None], sb[None, :], n, unbiased),
            _centred_raw(fro_x, a.square().sum(-1), sa, sa, n, unbiased),
            _centred_raw(fro_y, b.square().sum(-1), sb, sb, n, unbiased))


def _auto_form(L: int, M: int, n: int, d_x: int, d_y: int, itemsize: int) -> str:
    """The form with fewer multiply-adds: L + M Grams and the all-pairs product of the Grams, against a d_x x d_y
    cross-covariance per pair. For all pairs the crossover is n ~ M d / 2, not n ~ d as for a single pair. The Gram
    form only if its Grams fit GRAM_MAX_BYTES."""
    gram = n * n * (L * d_x + M * d_y + L * M)
    feature = n * (L * M * d_x * d_y + L * d_x * d_x + M * d_y * d_y)
    fits = (L + M) * n * n * itemsize <= GRAM_MAX_BYTES
    return "gram" if fits and gram <= feature else "feature"


def _cross_hsic(xs: Tensor, ys: Tensor, unbiased: bool, form: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """HSIC of every pair `[L, M]` and of every layer with itself (`[L]`, `[M]`), for xs `[L, n, d_x]`,
    ys `[M, n, d_y]`, in float32 at least."""
    _check_pair(xs, ys)
    (L, n, d_x), (M, _, d_y) = xs.shape, ys.shape
    _check_n(n, unbiased)
    dtype = torch.promote_types(upcast(xs).dtype, upcast(ys).dtype)
    xc, yc = (z - z.mean(1, keepdim=True) for z in (xs.to(dtype), ys.to(dtype)))
    if form == "auto":
        form = _auto_form(L, M, n, d_x, d_y, dtype.itemsize)
    if form == "gram":
        raw = _gram_raw(xc, yc, unbiased)
    elif form == "feature":
        raw = _feature_raw(xc, yc, unbiased)
    else:
        raise ValueError(f"unknown form {form!r}; expected 'auto', 'gram' or 'feature'")
    s = _scale(n, unbiased)
    return raw[0] * s, raw[1] * s, raw[2] * s


def cross_layer_cka(xs: Tensor, ys: Tensor, unbiased: bool = False, form: str = "auto") -> Tensor:
    """Linear CKA of every pair of layers, `[L, M]`, for xs `[L, n, d_x]` and ys `[M, n, d_y]` (row i of both is
    aligned pair i), on the input's device, in float32 at least (float64 stays float64).

    form "gram": each layer's centred Gram `[n, n]` once, all pairs from one batched matrix product of the Grams;
    memory (L + M) n^2.
    "feature": cross-covariances `[d_x, d_y]` by batched matmul; memory M d_x d_y. "auto" takes the cheaper one
    (see `_auto_form`). A constant layer has no CKA (nan).
    """
    return _cka(*_cross_hsic(xs, ys, unbiased, form))


def linear_cka(x: Tensor, y: Tensor, unbiased: bool = False, form: str = "auto") -> float:
    """Linear CKA of x `[n, d_x]` and y `[n, d_y]` (see `cross_layer_cka`)."""
    return cross_layer_cka(x[None], y[None], unbiased, form)[0, 0].item()


class _Rows:
    """Batches of aligned pairs, xs `[L, b, d_x]` and ys `[M, b, d_y]`, held on `device` until taken."""

    def __init__(self, L: int, M: int, device: torch.device) -> None:
        self.L, self.M, self.device = L, M, device
        self.xs: list[Tensor] = []
        self.ys: list[Tensor] = []
        self.n = 0

    def add(self, xs: Tensor, ys: Tensor) -> None:
        _check_pair(xs, ys)
        if (xs.shape[0], ys.shape[0]) != (self.L, self.M):
            raise ValueError(f"expected {self.L} and {self.M} layers, got {xs.shape[0]} and {ys.shape[0]}")
        self.xs.append(xs.to(self.device))
        self.ys.append(ys.to(self.device))
        self.n += xs.shape[1]

    def peek(self) -> tuple[Tensor, Tensor]:
        """All rows held, as one batch (at least one `add` first)."""
        if len(self.xs) > 1:
            self.xs, self.ys = [torch.cat(self.xs, 1)], [torch.cat(self.ys, 1)]
        return self.xs[0], self.ys[0]

    def take(self, k: int | None = None) -> tuple[Tensor, Tensor]:
        """The first k rows held (all if None); the rest stay."""
        xs, ys = self.peek()
        k = self.n if k is None else k
        self.xs, self.ys, self.n = [xs[:, k:]], [ys[:, k:]], self.n - k
        return xs[:, :k], ys[:, :k]


def _device(device: torch.device | str | None) -> torch.device:
    """`device`, or torch's default device if None."""
    return torch.get_default_device() if device is None else torch.device(device)


def _zeros(device: torch.device, *shape: int) -> Tensor:
    return torch.zeros(shape, dtype=torch.float64, device=device)


def _add_product(total: Tensor, a: Tensor, b: Tensor) -> None:
    """total += a @ b (batched or not): one fused call when the dtypes agree, else the product in a's dtype."""
    if a.dtype == total.dtype:
        (total.baddbmm_ if total.ndim == 3 else total.addmm_)(a, b)
    else:
        total += a @ b


def _moment_raw(fro: Tensor, sxy: Tensor, ssx: Tensor, ssy: Tensor, sxbx: Tensor, syay: Tensor, a: Tensor,
                b: Tensor, ab: Tensor, n: int | Tensor, unbiased: bool) -> Tensor:
    """Raw HSIC from uncentred sums over items (broadcasting), with c = X^T Y, sx = sum x_i, sy = sum y_i,
    bx = sum ||y_i||^2 x_i and ay = sum ||x_i||^2 y_i: fro = ||c||_F^2, sxy = sx^T c sy, ssx = ||sx||^2,
    ssy = ||sy||^2, sxbx = sx.bx, syay = sy.ay, a = sum ||x_i||^2, b = sum ||y_i||^2, ab = sum ||x_i||^2 ||y_i||^2.
    Biased: ||c - sx sy^T / n||_F^2. Unbiased, with K = X X^T: tr(K~L~) = ||c||^2 - ab, 1'K~1 = ||sx||^2 - a, and
    1'K~L~1 = sum_i (x_i.sx - ||x_i||^2)(y_i.sy - ||y_i||^2) = sx^T c sy - sx.bx - sy.ay + ab."""
    if not unbiased:
        return fro - 2 * sxy / n + ssx * ssy / n**2
    return _song(fro - ab, ssx - a, ssy - b, sxy - sxbx - syay + ab, n)


class _Side:
    """Float64 sums over the items of one condition's layers, of the rows minus `shift` (the first batch's mean,
    which CKA ignores and which keeps the uncentred sums from cancelling): s = sum x `[L, d]`, xx = X^T X
    `[L, d, d]`, a = sum ||x||^2 `[L]`, aa = sum ||x||^4 `[L]`, ax = sum ||x||^2 x `[L, d]`."""

    def __init__(self, L: int, d: int, device: torch.device) -> None:
        self.shift: Tensor | None = None
        self.s, self.xx, self.ax = _zeros(device, L, d), _zeros(device, L, d, d), _zeros(device, L, d)
        self.a, self.aa = _zeros(device, L), _zeros(device, L)

    def update(self, x: Tensor, product_dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """Add a batch `[L, b, d]` (its X^T X formed in `product_dtype`); returns it shifted, in float64, and its
        squared row norms `[L, b]`."""
        x = x.to(self.s.device, torch.float64)
        if self.shift is None:
            self.shift = x.mean(1, keepdim=True)
        x = x - self.shift
        sq = x.square().sum(-1)
        self.s += x.sum(1)
        xp = x.to(product_dtype)
        _add_product(self.xx, xp.mT, xp)
        self.a += sq.sum(1)
        self.aa += sq.square().sum(1)
        self.ax += (sq[:, :, None] * x).sum(1)
        return x, sq

    def raw(self, n: int, unbiased: bool) -> Tensor:
        """Raw HSIC of each layer with itself, `[L]`."""
        fro = torch.linalg.matrix_norm(self.xx).square()
        sxs = ((self.s[:, None] @ self.xx).squeeze(1) * self.s).sum(-1)
        ss, sax = self.s.square().sum(-1), (self.s * self.ax).sum(-1)
        return _moment_raw(fro, sxs, ss, ss, sax, sax, self.a, self.a, self.aa, n, unbiased)


class CKAAccumulator:
    """Exact streaming cross-layer CKA: `.update(xs [L, b, d_x], ys [M, b, d_y])` batch by batch, `.result()`
    `[L, M]` float64, equal up to rounding to `cross_layer_cka` of the concatenated batches.

    Keeps float64 feature-space sums: per pair X^T Y (all pairs as one `[L d_x, M d_y]` matrix), sum ||y||^2 x, sum ||x||^2 y and
    sum ||x||^2 ||y||^2; per layer X^T X, sums of x, ||x||^2, ||x||^4, ||x||^2 x; and n. Memory is `nbytes(...)`,
    about L*M*d_x*d_y*8 bytes, whatever n; past that use `MinibatchCKA` (see `cka_accumulator`). Both estimators
    come from the same sums: `unbiased` is `result`'s default. Batches are held until `buffer_rows` pairs arrived,
    so each pass over X^T Y serves many pairs; inputs of any dtype and device are moved to `device`.
    `product_dtype` float32 forms each held batch's X^T Y and X^T X in float32 (about half the time on a CPU)
    before they join the float64 sums, unless the inputs are float64; the result is then off by about 1e-6 relative,
    far below float16 states' own precision (for controls such as the permutation null).
    """

    def __init__(self, L: int, M: int, d_x: int, d_y: int, unbiased: bool = False,
                 device: torch.device | str | None = None, buffer_rows: int = 1024,
                 product_dtype: torch.dtype = torch.float64) -> None:
        device = _device(device)
        self.unbiased, self.buffer_rows, self.d = unbiased, max(buffer_rows, 1), (d_x, d_y)
        self.product_dtype = product_dtype
        self._n = 0  # pairs in the sums; the held ones come on top
        self._rows = _Rows(L, M, device)
        self._x, self._y = _Side(L, d_x, device), _Side(M, d_y, device)
        self._xy, self._ab = _zeros(device, L * d_x, M * d_y), _zeros(device, L, M)
        self._bx, self._ay = _zeros(device, L, M, d_x), _zeros(device, L, M, d_y)

    @staticmethod
    def nbytes(L: int, M: int, d_x: int, d_y: int) -> int:
        """Bytes of the float64 sums (the held batches come on top)."""
        return 8 * (L * M * (d_x * d_y + d_x + d_y + 1) + L * d_x * (d_x + 2) + M * d_y * (d_y + 2) + 2 * (L + M))

    @property
    def n(self) -> int:
        """Pairs seen."""
        return self._n + self._rows.n

    def update(self, xs: Tensor, ys: Tensor) -> None:
        """Add aligned pairs xs `[L, b, d_x]`, ys `[M, b, d_y]`."""
        if (xs.shape[-1], ys.shape[-1]) != self.d:
            raise ValueError(f"expected d_x, d_y = {self.d}, got {xs.shape[-1]} and {ys.shape[-1]}")
        self._rows.add(xs, ys)
        if self._rows.n >= self.buffer_rows:
            self._add(*self._rows.take())

    def _add(self, xs: Tensor, ys: Tensor) -> None:
        """Add held pairs (at least one) to the sums."""
        dtype = torch.promote_types(torch.promote_types(xs.dtype, ys.dtype), self.product_dtype)
        (x, a), (y, b) = self._x.update(xs, dtype), self._y.update(ys, dtype)
        _add_product(self._xy, x.to(dtype).transpose(0, 1).flatten(1).T, y.to(dtype).transpose(0, 1).flatten(1))
        self._ab += a @ b.T
        self._bx += b @ x
        self._ay += torch.einsum("lb,mbe->lme", a, y)
        self._n += x.shape[1]

    def result(self, unbiased: bool | None = None) -> Tensor:
        """CKA `[L, M]` of every pair seen so far (estimator: the constructor's unless given)."""
        unbiased = self.unbiased if unbiased is None else unbiased
        if self._rows.n:
            self._add(*self._rows.take())
        n, x, y = self._n, self._x, self._y
        _check_n(n, unbiased)
        (L, d_x), (M, d_y) = x.s.shape, y.s.shape
        fro = torch.linalg.vector_norm(self._xy.view(L, d_x, M, d_y), dim=(1, 3)).square()
        sxy = ((x.s[:, None] @ self._xy.view(L, d_x, M * d_y)).view(L, M, d_y) * y.s).sum(-1)
        sxbx, syay = (x.s[:, None] * self._bx).sum(-1), (y.s[None] * self._ay).sum(-1)
        hxy = _moment_raw(fro, sxy, x.s.square().sum(-1)[:, None], y.s.square().sum(-1)[None], sxbx, syay,
                          x.a[:, None], y.a[None], self._ab, n, unbiased)
        return _cka(hxy, x.raw(n, unbiased), y.raw(n, unbiased))


class MinibatchCKA:
    """Minibatch CKA of Nguyen, Raghu & Kornblith (2021): sum over batches of HSIC(X_l, Y_m), HSIC(X_l, X_l),
    HSIC(Y_m, Y_m), then CKA = sum HSIC_xy / sqrt(sum HSIC_xx sum HSIC_yy), `[L, M]` float64.

    Incoming pairs are regrouped into batches of exactly `batch_size` rows, each scored at once by
    `cross_layer_cka`'s machinery (memory bounded by one batch's Grams), so the caller's granularity (one item at a
    time) does not matter. `result` also scores the rows still held, if there are enough for the estimator, without
    consuming them. An estimator of its own: equal to the one-shot CKA for a single batch; unbiased HSIC converges
    to the same population value as the one-shot CKA, biased HSIC keeps a bias that depends on `batch_size`.
    """

    def __init__(self, L: int, M: int, unbiased: bool = True, device: torch.device | str | None = None,
                 batch_size: int = 1024) -> None:
        _check_n(batch_size, unbiased)
        device = _device(device)
        self.unbiased, self.batch_size, self.batches = unbiased, batch_size, 0
        self._rows = _Rows(L, M, device)
        self._sums = [torch.zeros(shape, dtype=torch.float64, device=device) for shape in ((L, M), (L,), (M,))]

    def update(self, xs: Tensor, ys: Tensor) -> None:
        """Add aligned pairs xs `[L, b, d_x]`, ys `[M, b, d_y]`."""
        self._rows.add(xs, ys)
        while self._rows.n >= self.batch_size:
            for total, h in zip(self._sums, _cross_hsic(*self._rows.take(self.batch_size), self.unbiased)):
                total += h
            self.batches += 1

    def result(self) -> Tensor:
        """CKA `[L, M]` over the batches so far, with the held rows as one more batch if there are enough."""
        sums = self._sums
        if self._rows.n >= (4 if self.unbiased else 2):
            sums = [total + h for total, h in zip(sums, _cross_hsic(*self._rows.peek(), self.unbiased))]
        elif not self.batches:
            raise ValueError(f"too few pairs for the estimator: {self._rows.n}")
        return _cka(*sums)


def weighted_cka(xs: Tensor, ys: Tensor, weights: Tensor, unbiased: bool = False, block_bytes: int = 2**26
                 ) -> Tensor:
    """CKA `[R, L, M]` float64 of R weightings of the same aligned pairs xs `[L, n, d_x]`, ys `[M, n, d_y]`:
    weights `[R, n]` (non-negative integers), pair i counted weights[r, i] times, equal up to rounding to
    `cross_layer_cka` of the pairs repeated so (e.g. item resamples of a bootstrap).

    Gram form, in float64 on rows shifted by their mean: every sum `_moment_raw` needs is a weighted sum over the
    Grams K_l = X_l X_l^T and G_m = Y_m Y_m^T, e.g. ||X^T W Y||^2 = sum_ij w_i w_j K_ij G_ij and sx.x_i = (K w)_i.
    The Grams' upper triangles are formed a block of rows at a time, with the products K_l * G_m, K_l * K_l and
    G_m * G_m of the block (at most `block_bytes`), and every weighting takes its sums from them in one matrix
    product: cost about n^2 (L d_x + M d_y + R L M) / 2, against R n L M d_x d_y for feature-space sums."""
    _check_pair(xs, ys)
    if weights.ndim != 2 or weights.shape[1] != xs.shape[1]:
        raise ValueError(f"expected weights [R, {xs.shape[1]}], got {tuple(weights.shape)}")
    w = weights.to(xs.device, torch.float64)
    n_pairs = w.sum(1)  # [R]
    for count in n_pairs.tolist():
        _check_n(int(count), unbiased)
    x, y = xs.to(torch.float64, copy=True), ys.to(torch.float64, copy=True)
    x -= x.mean(1, keepdim=True)
    y -= y.mean(1, keepdim=True)
    a, b = x.square().sum(-1), y.square().sum(-1)  # [L, n], [M, n]
    (L, n, _), M, R = x.shape, y.shape[0], len(w)
    kw = torch.einsum("lnd,rld->rln", x, torch.einsum("rn,lnd->rld", w, x))  # (K w)_i = x_i.sx, [R, L, n]
    gw = torch.einsum("mnd,rmd->rmn", y, torch.einsum("rn,mnd->rmd", w, y))
    P = L * M + L + M
    sums = x.new_zeros(R, P)  # w^T (K_l * G_m) w, then w^T (K_l * K_l) w, w^T (G_m * G_m) w
    block = max(1, block_bytes // (8 * P * n))
    buffer = x.new_empty(P, block * n)
    for start in range(0, n, block):  # the Grams are symmetric: a block of rows against the columns from `start`
        size, cols = min(block, n - start), n - start
        k = x[:, start : start + size] @ x[:, start:].mT  # [L, size, cols]
        g = y[:, start : start + size] @ y[:, start:].mT  # [M, size, cols]
        products = buffer[:, : size * cols].view(P, size, cols)
        torch.mul(k[:, None], g, out=products[: L * M].view(L, M, size, cols))
        torch.mul(k, k, out=products[L * M : L * M + L])
        torch.mul(g, g, out=products[L * M + L :])
        ww = w[:, start : start + size, None] * w[:, None, start:]  # [R, size, cols]
        ww[:, :, size:] *= 2  # (i, j) past the block stands for (j, i) too
        sums += ww.flatten(1) @ products.flatten(1).T
    fro, fro_x, fro_y = sums[:, : L * M].view(R, L, M), sums[:, L * M : L * M + L], sums[:, L * M + L :]
    wkw, wgw = w[:, None] * kw, w[:, None] * gw  # [R, L, n], [R, M, n]
    ssx, ssy = wkw.sum(-1), wgw.sum(-1)
    sa, sb = w @ a.T, w @ b.T  # [R, L], [R, M]
    hxy = _moment_raw(fro, wkw @ gw.mT, ssx[..., None], ssy[:, None], wkw @ b.T, a @ wgw.mT, sa[..., None],
                      sb[:, None], (w[:, None] * a) @ b.T, n_pairs[:, None, None], unbiased)
    hxx = _moment_raw(fro_x, (wkw * kw).sum(-1), ssx, ssx, (wkw * a).sum(-1), (wkw * a).sum(-1), sa, sa,
                      w @ a.square().T, n_pairs[:, None], unbiased)
    hyy = _moment_raw(fro_y, (wgw * gw).sum(-1), ssy, ssy, (wgw * b).sum(-1), (wgw * b).sum(-1), sb, sb,
                      w @ b.square().T, n_pairs[:, None], unbiased)
    return _cka(hxy, hxx, hyy)


def cka_accumulator(L: int, M: int, d_x: int, d_y: int, unbiased: bool, mode: str = "auto", max_bytes: int = 2**31,
                    device: torch.device | str | None = None, product_dtype: torch.dtype = torch.float64
                    ) -> CKAAccumulator | MinibatchCKA:
    """A streaming CKA accumulator: "exact" (`CKAAccumulator`, batch products in `product_dtype`) or "minibatch"
    (`MinibatchCKA`); "auto" is exact when its sums fit in `max_bytes`."""
    if mode == "auto":
        mode = "exact" if CKAAccumulator.nbytes(L, M, d_x, d_y) <= max_bytes else "minibatch"
    if mode == "exact":
        return CKAAccumulator(L, M, d_x, d_y, unbiased, device, product_dtype=product_dtype)
    if mode == "minibatch":
        return MinibatchCKA(L, M, unbiased, device)
    raise ValueError(f"unknown mode {mode!r}; expected 'auto', 'exact' or 'minibatch'")


def cka_readouts(m: Tensor, tau: float = 0.95) -> tuple[Tensor, Tensor]:
    """Per speech layer l of a CKA matrix `[L, M]`: best-match text layer argmax_m M[l, m] (`[L]` long) and band
    width #{m : M[l, m] >= tau max_m M[l, m]} (`[L]` long). The threshold is written max - (1 - tau)|max|, which
    is the same for a positive max and keeps the best match in the band where an unbiased row is all negative."""
    top, best = m.max(1)
    width = (m >= (top - (1 - tau) * top.abs())[:, None]).sum(1)
    return best, width


def matrix_agreement(a: Tensor, b: Tensor) -> float:
    """Pearson correlation between the entries of two CKA matrices of one shape (stability of the CKA matrix)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1].item()
