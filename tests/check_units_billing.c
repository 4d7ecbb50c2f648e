/*
 * check_units_billing.c — billing's tax rule without servers: the tax inside
 * a gross amount, rounded half up, exact at the contract's maxima where
 * gross * bp would overflow 64 bits.
 */
#include "billing.h"
#include "testutil.h"

typedef struct {
    int64_t gross;
    long bp;
    int64_t tax;
} tax_case;

static const tax_case cases[] = {
    {0, 2000, 0},
    {12000, 2000, 2000}, /* 100.00 net + 20 % */
    {1, 2000, 0},        /* 1/6 of a cent: 0.17 rounds down */
    {3, 2000, 1},        /* 0.5 rounds half up */
    {9, 2000, 2},        /* 1.5 */
    {10000, 0, 0},       /* no tax */
    {2, 10000, 1},       /* 100 %: half */
    {1, 10000, 1},       /* 0.5 up */
    {EV_TOTAL_MAX, 10000, EV_TOTAL_MAX / 2},
    {EV_TOTAL_MAX, 2000, 166666666666667}, /* 10^15 / 6 = 166666666666666.67 */
    {EV_TOTAL_MAX - 1, 9999, 499974998749937},
};

START_TEST(the_tax_inside_a_gross_amount_is_rounded_half_up_without_overflow)
{
    const tax_case *c = &cases[_i];
    int64_t got = bil_tax_part(c->gross, c->bp);
    ck_assert_msg(got == c->tax, "case %d: tax of %lld at %ld bp is %lld, want %lld", _i,
                  (long long)c->gross, c->bp, (long long)got, (long long)c->tax);
}
END_TEST

/* Against the exact rational, over a spread of amounts and every rate step
 * of 250 bp: gross * bp / (10000 + bp) - tax is in [-1/2, 1/2) (half up). */
START_TEST(the_tax_is_within_half_a_minor_unit_of_the_exact_value)
{
    for (long bp = 0; bp <= 10000; bp += 250) {
        for (int64_t g = 0; g < 100000; g += 7) {
            __int128 d = 10000 + bp,
                     num = (__int128)g * bp * 2 - (__int128)bil_tax_part(g, bp) * d * 2;
            /* Not ck_assert: each one writes a mark point down Check's
             * pipe, half a million system calls here. */
            if (num < -d || num >= d)
                ck_abort_msg("gross %lld at %ld bp", (long long)g, bp);
        }
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("units_billing");
    TCase *t = tcase_create("tax");
    tcase_add_loop_test(t, the_tax_inside_a_gross_amount_is_rounded_half_up_without_overflow, 0,
                        (int)(sizeof(cases) / sizeof(cases[0])));
    tcase_add_test(t, the_tax_is_within_half_a_minor_unit_of_the_exact_value);
    suite_add_tcase(s, t);
    return tu_run(s);
}
