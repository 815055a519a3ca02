// Validates FHIR R4 JSON files with HAPI FHIR's instance validator, offline: the base
// R4 StructureDefinitions and value sets, UCUM and the common code systems. Prints every
// message as file, severity, location and text; exits 1 if any is an error or fatal.
// Run by deploy/fhir-check.sh; not part of the product.
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import java.nio.file.Files;
import java.nio.file.Path;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;

public class FhirCheck {
    public static void main(String[] args) throws Exception {
        FhirContext ctx = FhirContext.forR4();
        ValidationSupportChain chain = new ValidationSupportChain(
            new DefaultProfileValidationSupport(ctx),
            new SnapshotGeneratingValidationSupport(ctx),
            new InMemoryTerminologyServerValidationSupport(ctx),
            new CommonCodeSystemsTerminologyService(ctx));
        FhirValidator validator = ctx.newValidator()
            .registerValidatorModule(new FhirInstanceValidator(chain));
        int errors = 0;
        for (String file : args) {
            ValidationResult result = validator.validateWithResult(Files.readString(Path.of(file)));
            for (SingleValidationMessage m : result.getMessages()) {
                System.out.println(file + "\t" + m.getSeverity() + "\t" + m.getLocationString()
                    + "\t" + m.getMessage());
                if (m.getSeverity() == ResultSeverityEnum.ERROR
                        || m.getSeverity() == ResultSeverityEnum.FATAL) {
                    errors++;
                }
            }
        }
        System.out.println("files: " + args.length + ", errors: " + errors);
        System.exit(errors == 0 ? 0 : 1);
    }
}
