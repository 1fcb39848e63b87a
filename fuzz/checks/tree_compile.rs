//! The native engine's compiler on arbitrary bytes, and the evaluator on whatever it
//! compiles: every model is compiled or refused with a reason, never a panic, and a compiled
//! model scores any rows (NaN and infinities included) into outputs of the promised size.
//! The evaluator reads nodes and features without bounds checks, trusting the compiler's
//! checks: this target is where that trust is tested (run with debug assertions on).

use lakescore_trees::NativeModel;

pub fn check(data: &[u8]) {
    let model = match NativeModel::compile(data) {
        Ok(model) => model,
        Err(why) => {
            assert!(!why.0.is_empty());
            return;
        }
    };
    // Rows from the input's last bytes: special values included.
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0, -1.0, f32::MAX];
    for rows in [1usize, 17, 300] {
        let x: Vec<f32> = (0..rows * model.n_features)
            .map(|i| {
                let b = data.get(data.len().saturating_sub(1 + i % 64)).copied().unwrap_or(0);
                if b < 64 {
                    specials[usize::from(b) % specials.len()]
                } else {
                    f32::from(b) / 16.0 - 8.0
                }
            })
            .collect();
        for threads in [1, 2] {
            let p = model.predict_f32(&x, rows, threads).expect("rows of the model's width");
            assert_eq!(p.scores.len(), rows * model.width());
            if model.class_labels().is_some() {
                assert_eq!(p.labels.len(), rows);
            }
        }
        if model.takes_columns() {
            // The same rows as columns, as the worker hands them to a linear model.
            let columns: Vec<Vec<f32>> =
                (0..model.n_features).map(|f| x.iter().skip(f).step_by(model.n_features).copied().collect()).collect();
            let columns: Vec<&[f32]> = columns.iter().map(Vec::as_slice).collect();
            let p = model.predict_f32_columns(&columns, rows, 2).expect("columns of the model's width");
            assert_eq!(p.scores.len(), rows * model.width());
        }
        let wide: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
        model.predict_f64(&wide, rows, 1).expect("rows of the model's width");
    }
    // A batch of the wrong width is refused, not read past.
    assert!(model.predict_f32(&[0.0; 3], 2, 1).is_err());
}
