//! The load generator's own CPU use while it offers load.
//!
//! The generator shares the machine with the system it measures, so every
//! cycle it spends is one the system under test did not get. A report says
//! how much it took: the process' CPU time (every thread, from
//! `CLOCK_PROCESS_CPUTIME_ID`) over the wall time of the sending phase, as
//! cores and as a share of the machine.

use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

/// The process' CPU time so far, all threads together.
pub fn process_cpu_time() -> Duration {
    Duration::try_from(clock_gettime(ClockId::ProcessCPUTime)).unwrap_or(Duration::ZERO)
}

/// The machine's online CPUs, whatever this process's affinity: under
/// `taskset -c 1` the generator still reports its share of the machine.
pub fn cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| online_cpus(list.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

/// Counts a kernel CPU list such as `0-3,6`.
fn online_cpus(list: &str) -> Option<usize> {
    list.split(',')
        .map(|range| match range.split_once('-') {
            Some((first, last)) => Some(last.parse::<usize>().ok()? + 1 - first.parse::<usize>().ok()?),
            None => range.parse::<usize>().ok().map(|_| 1),
        })
        .sum()
}

/// What the generator used over an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeneratorCpu {
    /// CPU seconds per wall second: 1.0 is one core kept busy.
    pub cores: f64,
    /// `cores` over the machine's CPUs, 0..=1.
    pub share: f64,
}

impl GeneratorCpu {
    /// From `cpu` time spent over `wall` time on a machine of `cpus` CPUs.
    pub fn from_times(cpu: Duration, wall: Duration, cpus: usize) -> Self {
        let wall = wall.as_secs_f64();
        if wall <= 0.0 {
            return Self { cores: 0.0, share: 0.0 };
        }
        let cores = cpu.as_secs_f64() / wall;
        Self {
            cores,
            share: (cores / cpus.max(1) as f64).clamp(0.0, 1.0),
        }
    }
}

/// A running measurement: started when the load starts, read when it ends.
#[derive(Debug, Clone, Copy)]
pub struct CpuStopwatch {
    cpu: Duration,
    wall: Instant,
}

impl CpuStopwatch {
    /// Starts measuring now.
    pub fn start() -> Self {
        Self {
            cpu: process_cpu_time(),
            wall: Instant::now(),
        }
    }

    /// What the process used since [`Self::start`].
    pub fn read(&self) -> GeneratorCpu {
        GeneratorCpu::from_times(process_cpu_time().saturating_sub(self.cpu), self.wall.elapsed(), cpus())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(online_cpus("0-1"), Some(2));
        assert_eq!(online_cpus("0-3,6"), Some(5));
        assert_eq!(online_cpus("0"), Some(1));
        assert_eq!(online_cpus("x"), None);
    }

    #[test]
    fn cores_and_share_of_the_machine() {
        let cpu = GeneratorCpu::from_times(Duration::from_secs(3), Duration::from_secs(10), 2);
        assert!((cpu.cores - 0.3).abs() < 1e-9);
        assert!((cpu.share - 0.15).abs() < 1e-9);
        assert_eq!(
            GeneratorCpu::from_times(Duration::from_secs(1), Duration::ZERO, 2),
            GeneratorCpu { cores: 0.0, share: 0.0 }
        );
    }

    #[test]
    fn spinning_shows_as_cpu_time() {
        let watch = CpuStopwatch::start();
        let before = process_cpu_time();
        let give_up = Instant::now() + Duration::from_secs(10);
        while process_cpu_time().saturating_sub(before) < Duration::from_millis(20) {
            assert!(Instant::now() < give_up, "20 ms of spinning never showed as CPU time");
            std::hint::black_box(());
        }
        let cpu = watch.read();
        assert!(cpu.cores > 0.0 && cpu.share > 0.0 && cpu.share <= 1.0, "{cpu:?}");
    }
}
