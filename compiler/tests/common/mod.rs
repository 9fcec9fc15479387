//! Shared by the compiler's test files.

/// xorshift64*: small, deterministic, good enough to pick formatting choices. With `odd` (not 0),
/// one choice in `odd` is an unusual (often invalid) one.
pub struct Rng {
    state: u64,
    odd: usize,
}

#[allow(dead_code)]
impl Rng {
    /// A generator for `seed` (spread, and made odd so it is never the all-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng::with_odd(seed, 0)
    }

    /// A generator that makes an unusual choice once in `odd` times.
    pub fn with_odd(seed: u64, odd: usize) -> Rng {
        Rng {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            odd,
        }
    }

    pub fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// Whether to make an unusual choice.
    pub fn odd(&mut self) -> bool {
        self.odd > 0 && self.one_in(self.odd)
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}
