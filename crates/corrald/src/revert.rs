//! Undo steps for multi-step changes: added as each step succeeds, run in reverse if the
//! whole change fails, dropped once it is committed. Bad input never leaves half-made
//! state behind.

type Undo = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub struct Reverter {
    undo: Vec<Undo>,
}

impl Reverter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, step: impl FnOnce() + Send + 'static) {
        self.undo.push(Box::new(step));
    }

    /// The change succeeded: keep everything.
    pub fn commit(mut self) {
        self.undo.clear();
    }
}

impl Drop for Reverter {
    fn drop(&mut self) {
        while let Some(step) = self.undo.pop() {
            step();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn reverts_in_reverse_unless_committed() {
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let mut r = Reverter::new();
            for i in 0..3 {
                let log = log.clone();
                r.add(move || log.lock().unwrap().push(i));
            }
        }
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);
        let mut r = Reverter::new();
        let l2 = log.clone();
        r.add(move || l2.lock().unwrap().push(9));
        r.commit();
        assert_eq!(log.lock().unwrap().len(), 3);
    }
}
