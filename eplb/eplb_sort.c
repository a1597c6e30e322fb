/* eplb_sort.c: the reference policy sorts loads with PyTorch's CPU sort, which is not stable:
 * it is libstdc++'s std::sort (introsort, median-of-three, heapsort fallback, final insertion
 * sort) over (value, index) pairs. Equal loads are frequent (the replicas of one expert), so
 * this file replays that exact algorithm to order them the same way. */
#include "eplb/eplb_internal.h"

typedef struct {
    float v;
    int i;
} pair;

/* PyTorch's KeyValueCompDesc without NaNs (loads are checked finite). */
static int before(const pair *a, const pair *b) { return a->v > b->v; }

static void swap_pair(pair *a, pair *b)
{
    pair t = *a;
    *a = *b;
    *b = t;
}

/* ---- heap (std::__adjust_heap, __push_heap, __make_heap, __pop_heap, __sort_heap) ---- */

static void push_heap(pair *first, long hole, long top, pair value)
{
    long parent = (hole - 1) / 2;
    while (hole > top && before(&first[parent], &value)) {
        first[hole] = first[parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    first[hole] = value;
}

static void adjust_heap(pair *first, long hole, long len, pair value)
{
    long top = hole, child = hole;
    while (child < (len - 1) / 2) {
        child = 2 * (child + 1);
        if (before(&first[child], &first[child - 1])) child--;
        first[hole] = first[child];
        hole = child;
    }
    if ((len & 1) == 0 && child == (len - 2) / 2) {
        child = 2 * (child + 1);
        first[hole] = first[child - 1];
        hole = child - 1;
    }
    push_heap(first, hole, top, value);
}

static void make_heap(pair *first, long len)
{
    if (len < 2) return;
    for (long parent = (len - 2) / 2;; parent--) {
        adjust_heap(first, parent, len, first[parent]);
        if (parent == 0) return;
    }
}

static void pop_heap(pair *first, long len, pair *result)
{
    pair value = *result;
    *result = first[0];
    adjust_heap(first, 0, len, value);
}

/* std::__partial_sort(first, last, last): with middle == last the select loop is empty. */
static void heap_sort(pair *first, long len)
{
    make_heap(first, len);
    while (len > 1) {
        --len;
        pop_heap(first, len, &first[len]);
    }
}

/* ---- introsort (std::__introsort_loop, __unguarded_partition_pivot) ---- */

enum { threshold = 16 };

static void move_median_to_first(pair *result, pair *a, pair *b, pair *c)
{
    if (before(a, b)) {
        if (before(b, c)) swap_pair(result, b);
        else if (before(a, c)) swap_pair(result, c);
        else swap_pair(result, a);
    } else if (before(a, c)) swap_pair(result, a);
    else if (before(b, c)) swap_pair(result, c);
    else swap_pair(result, b);
}

static pair *unguarded_partition(pair *first, pair *last, pair *pivot)
{
    for (;;) {
        while (before(first, pivot)) ++first;
        --last;
        while (before(pivot, last)) --last;
        if (!(first < last)) return first;
        swap_pair(first, last);
        ++first;
    }
}

static void introsort_loop(pair *first, pair *last, int depth)
{
    while (last - first > threshold) {
        if (depth == 0) {
            heap_sort(first, last - first);
            return;
        }
        --depth;
        pair *mid = first + (last - first) / 2;
        move_median_to_first(first, first + 1, mid, last - 1);
        pair *cut = unguarded_partition(first + 1, last, first);
        introsort_loop(cut, last, depth);
        last = cut;
    }
}

/* ---- final insertion sort ---- */

static void unguarded_linear_insert(pair *last)
{
    pair val = *last;
    pair *next = last - 1;
    while (before(&val, next)) {
        *last = *next;
        last = next;
        --next;
    }
    *last = val;
}

static void insertion_sort(pair *first, pair *last)
{
    if (first == last) return;
    for (pair *i = first + 1; i != last; ++i) {
        if (before(i, first)) {
            pair val = *i;
            for (pair *p = i; p != first; --p) *p = *(p - 1);
            *first = val;
        } else {
            unguarded_linear_insert(i);
        }
    }
}

static int floor_log2(long n)
{
    int k = 0;
    while (n > 1) {
        n >>= 1;
        k++;
    }
    return k;
}

/* The pairs keep value and index together as PyTorch's composite iterator does. */
void eplb_sort_desc_like_torch(const float *val, int n, int *idx, void *work)
{
    _Static_assert(sizeof(pair) <= EPLB_SORT_PAIR_BYTES, "sort work size");
    pair *p = work;
    for (int i = 0; i < n; i++) {
        p[i].v = val[i];
        p[i].i = i;
    }
    if (n > 1) introsort_loop(p, p + n, 2 * floor_log2(n));
    if (n > threshold) {
        insertion_sort(p, p + threshold);
        for (pair *i = p + threshold; i != p + n; ++i) unguarded_linear_insert(i);
    } else {
        insertion_sort(p, p + n);
    }
    for (int i = 0; i < n; i++) idx[i] = p[i].i;
}
