//! Data movement: gathers, transposes, slices and concatenations.

/// Rows of `table[.., width]` picked by `ids`; `None` names the first id
/// out of range.
pub fn embed<T: Copy>(table: &[T], width: usize, ids: &[i32]) -> Result<Vec<T>, i32> {
    let mut y = Vec::with_capacity(ids.len() * width);
    embed_into(table, width, ids, &mut y)?;
    Ok(y)
}

/// [`embed`] into `y` (its buffer reused).
pub fn embed_into<T: Copy>(
    table: &[T],
    width: usize,
    ids: &[i32],
    y: &mut Vec<T>,
) -> Result<(), i32> {
    let rows = table.len() / width.max(1);
    y.clear();
    for &id in ids {
        match usize::try_from(id) {
            Ok(r) if r < rows => y.extend_from_slice(&table[r * width..][..width]),
            _ => return Err(id),
        }
    }
    Ok(())
}

/// Permutes the axes of a row-major tensor.
pub fn transpose<T: Copy>(x: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let rank = shape.len();
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut idx = vec![0usize; rank];
    let mut y = Vec::with_capacity(x.len());
    for _ in 0..x.len() {
        let src: usize = idx.iter().zip(perm).map(|(&i, &p)| i * strides[p]).sum();
        y.push(x[src]);
        // Advance the output index like an odometer.
        for a in (0..rank).rev() {
            idx[a] += 1;
            if idx[a] < out_shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    y
}

/// `x[.., start..end, ..]` along `axis`.
pub fn slice<T: Copy>(x: &[T], shape: &[usize], axis: usize, start: usize, end: usize) -> Vec<T> {
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let n = shape[axis];
    let mut y = Vec::with_capacity(outer * (end - start) * inner);
    for o in 0..outer {
        y.extend_from_slice(&x[(o * n + start) * inner..(o * n + end) * inner]);
    }
    y
}

/// Concatenation along `axis` of tensors that agree elsewhere.
pub fn concat<T: Copy>(parts: &[(&[T], &[usize])], axis: usize) -> Vec<T> {
    let shape = parts[0].1;
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let total: usize = parts.iter().map(|(x, _)| x.len()).sum();
    let mut y = Vec::with_capacity(total);
    for o in 0..outer {
        for (x, s) in parts {
            let block = s[axis] * inner;
            y.extend_from_slice(&x[o * block..(o + 1) * block]);
        }
    }
    y
}
