//! QR images of a WhatsApp Web pairing code: PNG (also as the `data:` URL of the legacy
//! `qr.base64` field) and SVG.

use base64::Engine;
use qrcode::{Color, QrCode};

/// Pixels per QR module in the PNG: 8, so a module is one byte of a 1-bit image row.
const SCALE: usize = 8;
/// White border, in modules (the QR standard asks for 4).
const QUIET_ZONE: usize = 4;

/// The code as a black and white PNG (1 bit per pixel: a tenth of the bytes of an 8-bit one, and
/// the hub keeps one per session waiting for a scan).
pub fn png(code: &str) -> Result<Vec<u8>, String> {
    let qr = QrCode::new(code.as_bytes()).map_err(|e| e.to_string())?;
    let modules = qr.width();
    let colors = qr.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * SCALE;
    // One byte per module across (8 pixels, 1 bit each: 1 is white), SCALE rows per module.
    let row_bytes = modules + 2 * QUIET_ZONE;
    let mut pixels = vec![0xffu8; row_bytes * side];
    for (i, color) in colors.iter().enumerate() {
        if *color == Color::Dark {
            let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
            for y in my * SCALE..(my + 1) * SCALE {
                pixels[y * row_bytes + mx] = 0;
            }
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side as u32, side as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    // Each row repeats the one above SCALE - 1 times in SCALE: `Up` makes those rows zeros.
    encoder.set_filter(png::FilterType::Up);
    encoder.set_compression(png::Compression::Best);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&pixels).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// The PNG as a `data:image/png;base64,...` URL, ready for `<img src>`.
pub fn png_data_url(code: &str) -> Result<String, String> {
    Ok(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png(code)?)))
}

/// The code as an SVG document.
pub fn svg(code: &str) -> Result<String, String> {
    let qr = QrCode::new(code.as_bytes()).map_err(|e| e.to_string())?;
    Ok(qr.render::<qrcode::render::svg::Color>().min_dimensions(264, 264).quiet_zone(true).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "2@AbCdEf0123456789,KEY1+abc/def=,KEY2+ghi/jkl=,KEY3+mno/pqr=";

    #[test]
    fn png_is_a_square_image_with_dark_and_light_pixels() {
        let bytes = png(CODE).unwrap();
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::EXPAND);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.width, info.height);
        assert_eq!(info.width as usize % SCALE, 0);
        let pixels = &buf[..info.buffer_size()];
        assert!(pixels.contains(&0) && pixels.contains(&255));
        // The quiet zone is white.
        assert!(pixels[..info.width as usize * QUIET_ZONE * SCALE].iter().all(|p| *p == 255));
    }

    #[test]
    fn data_url_and_svg() {
        assert!(png_data_url(CODE).unwrap().starts_with("data:image/png;base64,iVBORw0KGgo"));
        let svg = svg(CODE).unwrap();
        assert!(svg.contains("<svg") && svg.contains("</svg>"));
    }
}
